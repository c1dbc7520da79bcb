"""Adaptive mimicking: the KL schedules and gates of DHMLoss on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from reid_dhm import DHMLoss
from reid_dhm.config import ConfigError, resolve_config
from reid_dhm.losses.dhm_loss import kl_gate_weights, kl_mimic

# Two branches, three classes, a batch of two. main gets sample 0 right and sample 1
# wrong; aux1 gets both right.
MAIN_Z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
AUX_Z = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 3.0]])
Y = torch.tensor([0, 2])


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def kl_rows(teacher, student, temperature=1.0):
    """Per-sample KL(p_t || p_s) at temperature T, times T^2, by hand."""
    out = []
    for t, s in zip(teacher.tolist(), student.tolist()):
        p = softmax([v / temperature for v in t])
        q = softmax([v / temperature for v in s])
        out.append(sum(a * math.log(a / b) for a, b in zip(p, q)) * temperature**2)
    return out


def ce(z, y):
    return sum(-math.log(softmax(r)[c]) for r, c in zip(z.tolist(), y.tolist())) / len(y)


def logits():
    return {"main": MAIN_Z.clone(), "aux1": AUX_Z.clone()}


def test_constant_is_the_paper():
    out = DHMLoss(kl_schedule="constant")(logits(), Y)
    kl_ma = sum(kl_rows(MAIN_Z, AUX_Z)) / 2
    kl_am = sum(kl_rows(AUX_Z, MAIN_Z)) / 2
    assert out["kl/main->aux1"].item() == pytest.approx(kl_ma, rel=1e-5)
    expected = ce(MAIN_Z, Y) + ce(AUX_Z, Y) + kl_ma + kl_am
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_adaptive_weights_each_teacher_by_its_running_accuracy():
    crit = DHMLoss(kl_schedule="adaptive", kl_adaptive_decay=0.5, kl_weight=2.0)
    kl_ma = sum(kl_rows(MAIN_Z, AUX_Z)) / 2  # main teaches aux1
    kl_am = sum(kl_rows(AUX_Z, MAIN_Z)) / 2
    base = ce(MAIN_Z, Y) + ce(AUX_Z, Y)
    # call 1: a_main = 0.5 * 0 + 0.5 * 0.5 = 0.25; a_aux1 = 0.5 * 1 = 0.5
    out = crit(logits(), Y)
    assert crit.kl_trust["main"].item() == pytest.approx(0.25)
    assert crit.kl_trust["aux1"].item() == pytest.approx(0.5)
    expected = base + 2.0 * 0.25 * kl_ma + 2.0 * 0.5 * kl_am
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    # the reported KL terms are unweighted
    assert out["kl/main->aux1"].item() == pytest.approx(kl_ma, rel=1e-5)
    # call 2: a_main = 0.5 * 0.25 + 0.5 * 0.5 = 0.375; a_aux1 = 0.5 * 0.5 + 0.5 = 0.75
    out = crit(logits(), Y)
    expected = base + 2.0 * 0.375 * kl_ma + 2.0 * 0.75 * kl_am
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert crit.trust_record() == pytest.approx({"kl_trust/main": 0.375, "kl_trust/aux1": 0.75})


def test_adaptive_gradient_reaches_the_student_scaled_by_the_teachers_trust():
    crit = DHMLoss(kl_schedule="adaptive", kl_adaptive_decay=0.0, label_smooth=0.0)
    z = {"main": MAIN_Z.clone(), "aux1": AUX_Z.clone().requires_grad_()}
    crit(z, Y)["loss"].backward()
    # decay 0: a_main = this batch's accuracy (0.5). d/d aux of 0.5 * KL(main||aux)
    # = 0.5 * (q_aux - p_main) / B; plus CE's (q_aux - onehot) / B.
    q_aux = torch.softmax(AUX_Z, 1)
    p_main = torch.softmax(MAIN_Z, 1)
    onehot = torch.nn.functional.one_hot(Y, 3).float()
    expected = (q_aux - onehot) / 2 + 0.5 * (q_aux - p_main) / 2
    assert torch.allclose(z["aux1"].grad, expected, atol=1e-6)


def test_adaptive_running_means_move_only_in_training_calls():
    crit = DHMLoss(kl_schedule="adaptive")
    crit.branch_losses(logits(), Y)  # the gradient monitor's split: no update
    assert crit.kl_trust == {}
    # a teacher without a running mean yet weighs 0: the loss is the CE terms alone
    assert crit.branch_losses(logits(), Y)["aux1"].item() == pytest.approx(ce(AUX_Z, Y), rel=1e-5)
    crit.eval()
    crit(logits(), Y)
    assert crit.kl_trust == {}
    crit.train()
    crit(logits(), Y)
    assert set(crit.kl_trust) == {"main", "aux1"}


def test_adaptive_state_round_trips_exactly():
    a = DHMLoss(kl_schedule="adaptive", kl_adaptive_decay=0.9)
    for _ in range(3):
        a(logits(), Y)
    b = DHMLoss(kl_schedule="adaptive", kl_adaptive_decay=0.9)
    b.load_state_dict(a.state_dict())
    for branch, value in a.kl_trust.items():
        assert torch.equal(b.kl_trust[branch], value)
    assert torch.equal(a(logits(), Y)["loss"], b(logits(), Y)["loss"])


def test_gate_correct_keeps_only_what_the_teacher_gets_right():
    out = DHMLoss(kl_gate="correct")(logits(), Y)
    rows = kl_rows(MAIN_Z, AUX_Z)
    # main is right on sample 0 only; the sum is still divided by the batch size (2)
    assert out["kl/main->aux1"].item() == pytest.approx(rows[0] / 2, rel=1e-5)
    # aux1 is right on both: its terms are the ungated ones
    assert out["kl/aux1->main"].item() == pytest.approx(sum(kl_rows(AUX_Z, MAIN_Z)) / 2, rel=1e-5)


def test_gate_confidence_weighs_by_the_teachers_probability_of_the_label():
    out = DHMLoss(kl_gate="confidence", temperature=2.0)(logits(), Y)
    rows = kl_rows(MAIN_Z, AUX_Z, temperature=2.0)
    w = [softmax(r)[c] for r, c in zip(MAIN_Z.tolist(), Y.tolist())]  # at T = 1
    expected = (rows[0] * w[0] + rows[1] * w[1]) / 2
    assert out["kl/main->aux1"].item() == pytest.approx(expected, rel=1e-5)


def test_gate_weights_and_ungated_kl_agree_with_the_paper_form():
    assert kl_gate_weights("none", MAIN_Z, Y) is None
    assert kl_gate_weights("correct", MAIN_Z, Y).tolist() == [1.0, 0.0]
    ones = torch.ones(2)
    assert torch.allclose(kl_mimic(MAIN_Z, AUX_Z, 3.0, ones), kl_mimic(MAIN_Z, AUX_Z, 3.0))


def test_schedule_is_implied_by_warmup_epochs_and_contradictions_are_refused():
    assert DHMLoss().kl_schedule == "constant"
    assert DHMLoss(kl_warmup_epochs=3).kl_schedule == "warmup"
    with pytest.raises(ValueError, match="kl_warmup_epochs=3 is only read by"):
        DHMLoss(kl_schedule="constant", kl_warmup_epochs=3)
    with pytest.raises(ValueError, match="needs kl_warmup_epochs >= 1"):
        DHMLoss(kl_schedule="warmup")
    with pytest.raises(ValueError, match="kl_gate"):
        DHMLoss(kl_gate="sometimes")
    with pytest.raises(ValueError, match="kl_adaptive_decay"):
        DHMLoss(kl_schedule="adaptive", kl_adaptive_decay=1.0)
    warm = DHMLoss(kl_warmup_epochs=4)
    assert [warm.kl_weight_at(e) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert DHMLoss(kl_schedule="adaptive").kl_weight_at(0) == 1.0


def test_config_fills_and_checks_the_schedule():
    cfg = resolve_config("synthreid", overrides=["loss.kl_warmup_epochs=3"])
    assert cfg["loss"]["kl_schedule"] == "warmup"
    assert resolve_config("synthreid")["loss"]["kl_schedule"] == "constant"
    with pytest.raises(ConfigError) as err:
        resolve_config(
            "synthreid", overrides=["loss.kl_schedule=constant", "loss.kl_warmup_epochs=3"]
        )
    msg = str(err.value)
    assert "loss.kl_warmup_epochs=3 is only read by loss.kl_schedule='warmup'" in msg
    assert "override" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="'loss.kl_gate' must be one of"):
        resolve_config("synthreid", overrides=["loss.kl_gate=maybe"])
    # a stored config from before kl_schedule existed reads as it ran
    stored = resolve_config("synthreid", overrides=["loss.kl_warmup_epochs=2"])
    del stored["loss"]["kl_schedule"]
    again = resolve_config(None, resumed=stored)
    assert again["loss"]["kl_schedule"] == "warmup" and again["loss"]["kl_warmup_epochs"] == 2
