"""DHMLoss: terms, directions, gradients and the KL value itself."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from reid_dhm import DHMLoss
from reid_dhm.losses import kl_mimic, mimicking_pairs

K = 6


def make_logits(branches=("main", "aux1", "aux2"), batch=5, requires_grad=True):
    g = torch.Generator().manual_seed(3)
    return OrderedDict(
        (b, torch.randn(batch, K, generator=g).requires_grad_(requires_grad)) for b in branches
    )


TARGETS = torch.tensor([0, 1, 2, 3, 4])


def test_bidirectional_has_n_times_n_minus_1_kl_terms():
    for n in (1, 2, 3, 4):
        branches = ("main", "aux1", "aux2", "aux3")[:n]
        out = DHMLoss("dhm")(make_logits(branches), TARGETS)
        kl = [k for k in out if k.startswith("kl/")]
        ce = [k for k in out if k.startswith("ce/")]
        assert len(kl) == n * (n - 1)
        assert ce == [f"ce/{b}" for b in branches]
    assert "kl/aux1->main" in out and "kl/main->aux1" in out


def test_total_is_the_sum_of_weighted_terms():
    crit = DHMLoss("dhm", ce_weights={"aux2": 0.5}, kl_weight=2.0)
    out = crit(make_logits(), TARGETS)
    expected = out["ce/main"] + out["ce/aux1"] + 0.5 * out["ce/aux2"]
    expected = expected + 2.0 * sum(v for k, v in out.items() if k.startswith("kl/"))
    torch.testing.assert_close(out["loss"], expected)
    assert out["loss"].requires_grad
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")


def test_modes():
    logits = make_logits()
    assert set(DHMLoss("baseline")(logits, TARGETS)) == {"loss", "ce/main"}
    assert set(DHMLoss("dsl")(logits, TARGETS)) == {"loss", "ce/main", "ce/aux1", "ce/aux2"}


def test_directions():
    order = ["main", "aux1", "aux2"]
    assert mimicking_pairs(order, "top-down") == [
        ("main", "aux1"),
        ("main", "aux2"),
        ("aux1", "aux2"),
    ]
    assert mimicking_pairs(order, "bottom-up") == [
        ("aux1", "main"),
        ("aux2", "main"),
        ("aux2", "aux1"),
    ]
    assert len(mimicking_pairs(order, "bidirectional")) == 6
    out = DHMLoss("dhm", direction="top-down")(make_logits(), TARGETS)
    assert sorted(k for k in out if k.startswith("kl/")) == [
        "kl/aux1->aux2",
        "kl/main->aux1",
        "kl/main->aux2",
    ]


def test_no_gradient_reaches_a_teacher():
    teacher = torch.randn(4, K, requires_grad=True)
    student = torch.randn(4, K, requires_grad=True)
    kl_mimic(teacher, student).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0

    # top-down: main only ever teaches, so KL alone sends it no gradient at all.
    logits = make_logits()
    crit = DHMLoss("dhm", direction="top-down", ce_weights=dict.fromkeys(logits, 0.0))
    crit(logits, TARGETS)["loss"].backward()
    assert torch.count_nonzero(logits["main"].grad) == 0
    assert logits["aux2"].grad.abs().sum() > 0


def test_kl_is_zero_for_identical_logits_and_matches_numpy():
    z = torch.randn(5, K)
    assert kl_mimic(z, z.clone()).item() == pytest.approx(0.0, abs=1e-7)

    t, s = torch.randn(5, K, dtype=torch.float64), torch.randn(5, K, dtype=torch.float64)
    for temp in (1.0, 4.0):

        def softmax(a, temp=temp):
            e = np.exp(a / temp - (a / temp).max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        p, q = softmax(t.numpy()), softmax(s.numpy())
        ref = (p * (np.log(p) - np.log(q))).sum(1).mean() * temp**2
        assert kl_mimic(t, s, temp).item() == pytest.approx(ref, rel=1e-10)
        out = DHMLoss("dhm", temperature=temp)({"main": t, "aux1": s}, TARGETS)
        assert out["kl/main->aux1"].item() == pytest.approx(ref, rel=1e-10)


def test_label_smoothing_ce_matches_formula():
    z = torch.randn(5, K, dtype=torch.float64)
    eps = 0.1
    out = DHMLoss("baseline", label_smooth=eps)({"main": z}, TARGETS)
    logp = torch.log_softmax(z, 1)
    target = torch.full_like(logp, eps / K)
    target[torch.arange(5), TARGETS] += 1 - eps
    assert out["ce/main"].item() == pytest.approx((-(target * logp).sum(1)).mean().item())


def test_active_set_is_honoured():
    logits = make_logits()
    out = DHMLoss("dhm")(logits, TARGETS, active=["main", "aux2"])
    assert sorted(out) == ["ce/aux2", "ce/main", "kl/aux2->main", "kl/main->aux2", "loss"]
    out = DHMLoss("dhm")(logits, TARGETS, active=[])
    assert sorted(out) == ["ce/main", "loss"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="distill"), "valid modes are"),
        (dict(direction="sideways"), "valid directions are"),
        (dict(label_smooth=1.5), "label_smooth"),
        (dict(temperature=0), "temperature"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DHMLoss(**kwargs)


def test_bad_branch_names():
    with pytest.raises(ValueError, match="'aux5'.*output branches are"):
        DHMLoss()(make_logits(), TARGETS, active=["aux5"])
    with pytest.raises(ValueError, match="ce_weights names branch 'aux9'"):
        DHMLoss(ce_weights={"aux9": 1.0})(make_logits(), TARGETS)
    with pytest.raises(ValueError, match="no 'main' branch"):
        DHMLoss()({"aux1": torch.randn(5, K)}, TARGETS)


def test_a_single_branch_name_string_is_refused():
    # list('aux1') would be ['a', 'u', 'x', '1']: refused rather than misread.
    with pytest.raises(ValueError, match="active must be a list of branch names.*'aux1'"):
        DHMLoss()(make_logits(), TARGETS, active="aux1")
    with pytest.raises(ValueError, match="ce_weights must be a mapping"):
        DHMLoss(ce_weights="aux1")
