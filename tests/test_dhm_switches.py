"""Issue 9: the gradient-consistency monitor and the switchable design choices."""

import json
import math
from collections import OrderedDict

import pytest
import torch
from conftest import run_training

from reid_dhm import DHMLoss, build_model
from reid_dhm.cli import summary as summary_tool  # noqa: E402
from reid_dhm.engines.grad_monitor import GradientMonitor, cosine, monitor_history
from reid_dhm.losses import mimicking_pairs
from reid_dhm.models import count_parameters

K = 5


# ------------------------------------------------------------------ monitor
def test_cosine_by_hand():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    assert cosine(a, b) == pytest.approx(1 / math.sqrt(2))
    assert cosine(a, [torch.tensor([-2.0, 0.0]), torch.tensor([0.0])]) == pytest.approx(-1.0)
    assert math.isnan(cosine(a, [torch.zeros(2), torch.zeros(1)]))


def test_statistics_of_a_hand_made_two_branch_case():
    # main runs through stem1 and stem2, aux1 through stem1 only.
    grads = {
        "main": OrderedDict(stem1=[torch.tensor([3.0, 4.0])], stem2=[torch.tensor([1.0])]),
        "aux1": OrderedDict(stem1=[torch.tensor([4.0, -3.0])]),
    }
    stats = GradientMonitor.statistics(grads)
    assert stats["grad/cos/main~aux1"] == pytest.approx(0.0)  # orthogonal on the shared stage
    assert stats["grad/cos/stem1/main~aux1"] == pytest.approx(0.0)
    assert "grad/cos/stem2/main~aux1" not in stats  # aux1 does not run through stem2
    assert stats["grad/norm/main"] == pytest.approx(math.sqrt(26))
    assert stats["grad/norm/stem1/main"] == pytest.approx(5.0)
    assert stats["grad/norm/aux1"] == pytest.approx(5.0)


def _reference_grads(model, crit, x, y, branch):
    """One branch's gradient on the stem by a plain backward of its own loss."""
    model.zero_grad(set_to_none=True)
    out = model.forward_branches(x, model.branch_names)
    crit.branch_losses(out, y)[branch].backward()
    grads = OrderedDict()
    for stage in model.branch_path(branch):
        params = list(getattr(model, stage).parameters())
        if params:
            grads[stage] = torch.cat([p.grad.flatten() for p in params])
    return grads


@pytest.mark.parametrize("mode", ["dsl", "dhm"])
def test_monitor_matches_separate_backward_passes(mode):
    torch.manual_seed(0)
    model = build_model("dhm_cifar_resnet20", K).train()
    crit = DHMLoss(mode)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, K, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = GradientMonitor(model, crit, every=1).measure(x, y)
    # Training is untouched: no .grad written, BN running statistics restored.
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ref = {b: _reference_grads(model, crit, x, y, b) for b in model.branch_names}
    for p, q in (("main", "aux1"), ("main", "aux2"), ("aux1", "aux2")):
        shared = [s for s in ref[p] if s in ref[q]]
        a = torch.cat([ref[p][s] for s in shared]).double()
        b = torch.cat([ref[q][s] for s in shared]).double()
        expected = float(a @ b / (a.norm() * b.norm()))
        assert stats[f"grad/cos/{p}~{q}"] == pytest.approx(expected, abs=1e-5)
        for s in shared:
            a, b = ref[p][s].double(), ref[q][s].double()
            expected = float(a @ b / (a.norm() * b.norm()))
            assert stats[f"grad/cos/{s}/{p}~{q}"] == pytest.approx(expected, abs=1e-5)
    for b in model.branch_names:
        norm = torch.cat(list(ref[b].values())).double().norm()
        assert stats[f"grad/norm/{b}"] == pytest.approx(float(norm), rel=1e-5)
    # aux2 forks from layer1: it shares nothing deeper with the others.
    assert "grad/cos/layer2/main~aux2" not in stats and "grad/cos/layer2/main~aux1" in stats


def test_monitor_sampling_means_and_frozen_stem():
    model = build_model("dhm_cifar_resnet20", K).train()
    monitor = GradientMonitor(model, DHMLoss("dsl"), every=3)
    assert [s for s in range(8) if monitor.due(s)] == [0, 3, 6]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, K, (4,))
    first = monitor.measure(x, y)
    second = monitor.measure(x.flip(0), y.flip(0))
    means = monitor.epoch_means()
    key = "grad/cos/main~aux1"
    assert means[key] == pytest.approx((first[key] + second[key]) / 2)
    assert monitor.epoch_means() == {}  # reset after reading
    for p in model.parameters():
        p.requires_grad_(False)
    assert monitor.measure(x, y) == {}  # a fully frozen stem has nothing to measure
    with pytest.raises(ValueError, match="grad_monitor_every"):
        GradientMonitor(model, DHMLoss(), every=0)


def test_monitor_history_keeps_only_monitored_epochs():
    history = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0, "grad/cos/main~aux1": 0.5}]
    assert monitor_history(history) == [{"epoch": 2, "grad/cos/main~aux1": 0.5}]


# ------------------------------------------------------------------ KL warm-up
def test_kl_warmup_schedule_per_epoch():
    crit = DHMLoss("dhm", kl_weight=2.0, kl_warmup_epochs=4)
    assert [crit.kl_weight_at(e) for e in range(7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert DHMLoss("dhm", kl_weight=2.0).kl_weight_at(0) == 2.0  # default: no warm-up
    g = torch.Generator().manual_seed(0)
    logits = OrderedDict((b, torch.randn(4, K, generator=g)) for b in ("main", "aux1"))
    y = torch.tensor([0, 1, 2, 3])
    crit.set_epoch(0)
    out = crit(logits, y)
    assert out["loss"] == pytest.approx(float(out["ce/main"] + out["ce/aux1"]))
    crit.set_epoch(1)
    out = crit(logits, y)
    kl = out["kl/main->aux1"] + out["kl/aux1->main"]
    assert out["loss"] == pytest.approx(float(out["ce/main"] + out["ce/aux1"] + 0.5 * kl))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="kl_warmup_epochs"):
            DHMLoss(kl_warmup_epochs=bad)


# ------------------------------------------------------------------ KL teachers
def test_kl_teachers_choose_the_teacher_set():
    order = ["main", "aux1", "aux2"]
    assert mimicking_pairs(order, "bidirectional", "main") == [("main", "aux1"), ("main", "aux2")]
    assert mimicking_pairs(order, "bidirectional", "deeper") == [
        ("main", "aux1"),
        ("main", "aux2"),
        ("aux1", "main"),
        ("aux1", "aux2"),
    ]
    assert len(mimicking_pairs(order, "bidirectional", "all")) == 6
    # Orthogonal to the direction: top-down pairs whose teacher is main.
    assert mimicking_pairs(order, "top-down", "main") == [("main", "aux1"), ("main", "aux2")]
    assert mimicking_pairs(order, "bottom-up", "deeper") == [("aux1", "main")]
    with pytest.raises(ValueError, match="leaves no KL pair"):
        DHMLoss(direction="bottom-up", kl_teachers="main")
    with pytest.raises(ValueError, match="kl_teachers"):
        DHMLoss(kl_teachers="everyone")
    out = DHMLoss(kl_teachers="main")(
        OrderedDict((b, torch.randn(3, K)) for b in order), torch.tensor([0, 1, 2])
    )
    assert sorted(k for k in out if k.startswith("kl/")) == ["kl/main->aux1", "kl/main->aux2"]


def test_branch_losses_partition_the_loss():
    g = torch.Generator().manual_seed(1)
    logits = OrderedDict(
        (b, torch.randn(4, K, generator=g).requires_grad_()) for b in ("main", "aux1", "aux2")
    )
    y = torch.tensor([0, 1, 2, 3])
    crit = DHMLoss("dhm", ce_weights={"aux2": 0.3}, kl_weight=0.7)
    parts = crit.branch_losses(logits, y)
    assert list(parts) == ["main", "aux1", "aux2"]
    total = sum(parts.values()).detach()
    assert float(total) == pytest.approx(float(crit(logits, y)["loss"].detach()))
    # A branch's part reaches that branch's logits only (teachers are detached).
    grads = torch.autograd.grad(parts["aux1"], list(logits.values()), allow_unused=True)
    assert grads[0] is None and grads[2] is None and grads[1].abs().sum() > 0


# ------------------------------------------------------------------ branch style
def _stage_params(model, names):
    return sum(count_parameters(getattr(model, n)) for n in names)


@pytest.mark.parametrize(
    "name, tails",
    [
        ("dhm_resnet50", {"aux1": ("layer4",), "aux2": ("layer3", "layer4")}),
        ("dhm_resnet18", {"aux1": ("layer4",), "aux2": ("layer3", "layer4")}),
        ("dhm_mobilenetv2", {"aux1": ("conv7", "conv8", "conv9"), "aux2": tuple(
            f"conv{i}" for i in range(5, 10))}),
        ("dhm_cifar_resnet20", {"aux1": ("layer3",), "aux2": ("layer2", "layer3")}),
    ],
)  # fmt: skip
def test_mirror_branches_are_copies_of_the_main_tail(name, tails):
    paper = build_model(name, 10)
    mirror = build_model(name, 10, branch_style="mirror")
    classifier = count_parameters(mirror.classifier)
    for branch, stages in tails.items():
        aux = mirror.aux_branches[branch]
        assert count_parameters(aux) == _stage_params(mirror, stages) + classifier
        assert aux.feature_dim == mirror.feature_dim
        assert aux.fork == paper.aux_branches[branch].fork
    # The main path and the deployed model do not depend on the branch style.
    assert count_parameters(mirror.deploy()) == count_parameters(paper.deploy())
    assert mirror.deploy().state_dict().keys() == paper.deploy().state_dict().keys()
    assert mirror.init_kwargs["branch_style"] == "mirror"


def test_paper_style_is_the_default_and_unchanged():
    # The numbers of the paper recipes as the first round measured them.
    model = build_model("dhm_resnet50", 1000)
    assert count_parameters(model.aux_branches["aux1"]) == 58_668_008
    assert count_parameters(model.aux_branches["aux2"]) == 16_297_960
    with pytest.raises(ValueError, match="branch_style"):
        build_model("dhm_mobilenetv2", 10, branch_style="copy")
    with pytest.raises(ValueError, match="takes no keyword 'branch_style'"):
        build_model("dhm_wrn16_8", 10, branch_style="mirror")


def test_mirror_checkpoint_round_trip(tmp_path):
    from reid_dhm.models.checkpoint import model_from_checkpoint, save_checkpoint

    model = build_model("dhm_mobilenetv2", 4, branch_style="mirror")
    save_checkpoint(tmp_path / "c.pth", model, "dhm_mobilenetv2", 1)
    again = model_from_checkpoint(tmp_path / "c.pth")
    assert again.init_kwargs["branch_style"] == "mirror"
    assert count_parameters(again) == count_parameters(model)


def test_summary_tool_shows_both_styles(capsys):
    assert summary_tool.main(["--model", "dhm_mobilenetv2", "--branch-style", "both"]) == 0
    text = capsys.readouterr().out
    assert "branch style paper" in text and "branch style mirror" in text
    assert text.count("training total") == 2
    assert summary_tool.main(["--model", "dhm_mobilenetv2", "--branch-style", "mirror"]) == 0
    assert "branch style mirror" in capsys.readouterr().out


# ------------------------------------------------------------------ end to end
def test_reid_run_with_every_switch(tiny_reid, tmp_path):
    out = tmp_path / "run"
    overrides = [
        f"data.root={tiny_reid}", "model.name=dhm_mobilenetv2", "model.pretrained=false",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.workers=0",
        "train.max_epoch=2", "train.fixbase_epoch=0", "test.vis_queries=0",
        "model.branch_style=mirror", "loss.kl_warmup_epochs=2", "loss.kl_teachers=deeper",
        "train.grad_monitor_every=2", "test.report=true",
    ]  # fmt: skip
    result = run_training("folder", overrides, out)
    assert (out / "report" / "index.html").stat().st_size > 0  # test.report: the HTML report
    results = json.loads((out / "results.json").read_text())
    assert result.results == results
    rows = results["grad_monitor"]
    assert [r["epoch"] for r in rows] == [1, 2]
    for pair in ("main~aux1", "main~aux2", "aux1~aux2"):
        assert -1.0 <= rows[-1][f"grad/cos/{pair}"] <= 1.0
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert [h["kl_weight"] for h in ckpt["history"]] == [0.0, 0.5]
    assert ckpt["model_kwargs"]["branch_style"] == "mirror"
    assert "kl/aux2->main" not in ckpt["history"][-1]  # aux2, the shallowest, never teaches
    assert "kl/aux1->main" in ckpt["history"][-1]
    assert result.model.init_kwargs["branch_style"] == "mirror"


def test_classification_run_with_the_monitor(tiny_cifar10, tmp_path):
    out = tmp_path / "cls"
    overrides = [
        f"data.root={tiny_cifar10}", "model.name=dhm_cifar_resnet20", "data.batch_size=8",
        "data.workers=0", "data.test_batch_size=10", "train.max_epoch=2",
        "train.grad_monitor_every=2", "loss.kl_warmup_epochs=1",
    ]  # fmt: skip
    result = run_training("cifar10", overrides, out)
    results = json.loads((out / "results.json").read_text())
    assert result.results == results
    assert [r["epoch"] for r in results["grad_monitor"]] == [1, 2]
    assert "grad/cos/layer1/main~aux2" in results["grad_monitor"][0]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert [h["kl_weight"] for h in ckpt["history"]] == [0.0, 1.0]
