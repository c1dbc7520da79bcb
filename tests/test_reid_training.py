"""Re-ID training end to end: real torchreid data manager and engine, tools/train.py."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torchreid.reid import models as trmodels

from reid_dhm import BranchSampler, DHMLoss, build_model
from reid_dhm.data.reid_manager import build_reid_datamanager
from reid_dhm.engines.optim import build_optimizer, build_scheduler
from reid_dhm.engines.reid_engine import DHMReIDEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train as train_tool  # noqa: E402

TINY = [
    "model.name=dhm_mobilenetv2",
    "model.pretrained=false",
    "data.height=64",
    "data.width=32",
    "data.batch_size=8",
    "data.test_batch_size=16",
    "data.workers=0",
    "train.fixbase_epoch=1",
    "test.vis_queries=3",
    "test.vis_topk=4",
]


def run_train(tiny_reid, out, *extra):
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(out)]
    return train_tool.main(argv + TINY + list(extra))


def test_two_epoch_run_writes_everything(tiny_reid, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(tiny_reid, out, "train.max_epoch=2") == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "R1" in printed and "mINP" in printed

    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "dhm_mobilenetv2"
    assert ckpt["branches"] == ["main", "aux1", "aux2"] and ckpt["num_classes"] == 6
    assert ckpt["config"]["data"]["dataset"] == "folder"
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 2
    history = ckpt["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["frozen"] and not history[1]["frozen"]
    for term in ("ce/main", "ce/aux1", "ce/aux2", "kl/aux1->main", "kl/main->aux2", "acc/aux2"):
        assert term in history[1]

    for name in ("config.yaml", "training_curves.png", "ranked_results.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["folder"]["main"]["mAP"] <= 1.0

    # The deployed weights load strictly into torchreid's own MobileNetV2.
    plain = trmodels.build_model("mobilenetv2_x1_0", 6, pretrained=False)
    plain.load_state_dict(torch.load(out / "deployed.pth", weights_only=True), strict=True)


def test_resume_continues_at_the_saved_epoch(tiny_reid, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(tiny_reid, out, "train.max_epoch=1") == 0
    first = torch.load(out / "checkpoint.pth", weights_only=True)
    assert first["epoch"] == 1
    capsys.readouterr()
    assert (
        run_train(tiny_reid, out, "train.max_epoch=2", "--resume", str(out / "checkpoint.pth")) == 0
    )
    printed = capsys.readouterr().out
    assert "resuming" in printed and "epoch 1/2" not in printed and "epoch 2/2" in printed
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert ckpt["scheduler"]["last_epoch"] == 2

    # --eval-only evaluates the checkpoint without training.
    capsys.readouterr()
    argv = ["--resume", str(out / "checkpoint.pth"), "--eval-only", "test.per_branch=true"]
    assert run_train(tiny_reid, tmp_path / "eval", *argv) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "epoch 1/" not in printed
    rows = [line.split()[0] for line in printed.splitlines() if line.startswith(("main ", "aux"))]
    assert rows == ["main", "aux1", "aux2"]  # paper Table 5: every branch evaluated
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["folder"]) == {"main", "aux1", "aux2"}


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {
        k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])
    }


def test_fixbase_freezes_backbone_weights_and_bn_stats(tiny_reid):
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=8, test_batch_size=16, workers=0
    )
    model = build_model("dhm_mobilenetv2", manager.num_train_pids)
    optimizer = build_optimizer(model, "amsgrad", lr=1e-3)
    engine = DHMReIDEngine(
        manager, model, optimizer, DHMLoss(), scheduler=build_scheduler(optimizer),
        branch_sampler=BranchSampler(model.branch_names),
    )  # fmt: skip
    engine.max_epoch = 2
    before = _snapshot(model)
    engine.epoch = 0
    engine.train(fixbase_epoch=1)
    changed = _changed(before, model)
    backbone = {k for k in before if k.split(".")[0] in model.pretrained_module_names()}
    assert backbone and not (changed & backbone)  # weights AND BN running stats fixed
    assert any(k.startswith("aux_branches.aux1.") for k in changed)
    assert any(k.startswith("aux_branches.aux2.") for k in changed)
    assert {"classifier.weight", "classifier.bias"} <= changed
    assert all(p.requires_grad is False for p in model.conv1.parameters())

    before = _snapshot(model)
    engine.epoch = 1
    engine.train(fixbase_epoch=1)
    changed = _changed(before, model)
    assert "conv1.conv.weight" in changed and "conv1.bn.running_mean" in changed
    assert all(p.requires_grad for p in model.parameters())
    assert [h["frozen"] for h in engine.history] == [True, False]


def test_forward_backward_reports_every_term_and_honours_active_set(tiny_reid):
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=8, workers=0
    )
    model = build_model("dhm_mobilenetv2", manager.num_train_pids)
    engine = DHMReIDEngine(manager, model, build_optimizer(model), DHMLoss())
    batch = next(iter(manager.train_loader))
    summary = engine.forward_backward(batch)
    assert {
        "loss",
        "ce/main",
        "ce/aux1",
        "ce/aux2",
        "kl/aux2->aux1",
        "acc/main",
        "acc/aux1",
    } <= set(summary)
    assert sum(k.startswith("kl/") for k in summary) == 6
    engine.active = ("main", "aux2")
    model.set_active_branches(engine.active)
    summary = engine.forward_backward(batch)
    assert "ce/aux1" not in summary and "kl/aux2->main" in summary


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--dataset", "synthreid", "optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (
            ["--dataset", "market1501", "--root", "/nonexistent"],
            "market1501 not found under --root",
        ),
        (["--dataset", "synthreid", "--eval-only"], "--eval-only needs --resume"),
        (["--dataset", "market1501", "--root", "/tmp", "--resume", "/nope.pth"], "nope.pth"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, match, capsys):
    assert train_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_missing_imagenet_weights_explain_no_pretrained(tiny_reid, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(tmp_path / "o")]
    assert train_tool.main(argv + ["data.height=64", "data.width=32", "data.workers=0"]) == 2
    err = capsys.readouterr().err
    assert "--no-pretrained" in err and "nothing is downloaded" in err
