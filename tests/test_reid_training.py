"""Re-ID training end to end: real torchreid data manager and engine, ``reid_dhm.runs.train``.

Runs are library calls (``conftest.run_training``); the tests whose point is the command
line (resume flags, ``--eval-only`` into ``eval/``, the earlier run kept, one-line errors
and exit statuses) call ``reid-dhm train``'s ``main``.
"""

import json
import re

import numpy as np
import pytest
import torch
from conftest import run_training
from torchreid.reid import models as trmodels

from reid_dhm import BranchSampler, DHMLoss, build_model
from reid_dhm.cli import train as train_tool  # noqa: E402
from reid_dhm.data.reid_manager import build_reid_datamanager
from reid_dhm.engines.hooks import FreezeHook
from reid_dhm.engines.optim import build_optimizer, build_scheduler
from reid_dhm.engines.reid_task import ReidTask
from reid_dhm.engines.trainer import Trainer

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
    """``reid-dhm train`` (the command line) on the tiny data; its exit status."""
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(out)]
    return train_tool.main(argv + TINY + list(extra))


def train_tiny(tiny_reid, out, *extra):
    """The same run as a library call; its ``RunResult``."""
    return run_training("folder", [f"data.root={tiny_reid}", *TINY, *extra], out)


def test_two_epoch_run_writes_everything(tiny_reid, tmp_path, capsys):
    out = tmp_path / "run"
    result = train_tiny(tiny_reid, out, "train.max_epoch=2", "train.print_freq=2")
    captured = capsys.readouterr()
    printed = captured.out
    assert "mAP" in printed and "R1" in printed and "mINP" in printed
    # The console line carries the KL total beside the CE terms (every term is in history).
    line = next(x for x in printed.splitlines() if x.startswith("epoch 2/2  "))
    # CE per branch (main/aux1/aux2) and the KL total, within 120 columns.
    assert re.search(r"  ce [\d.]+/[\d.]+/[\d.]+  kl [\d.]+  ", line) and "kl/" not in line
    assert len(line) <= 120
    # Off a terminal, print_freq gives a progress line every print_freq iterations.
    assert "epoch 1/2 [2/" in printed and "epoch 2/2 [2/" in printed
    # A random backbone frozen for train.fixbase_epoch epochs is worth a warning.
    assert "warning: train.fixbase_epoch=1 freezes the backbone" in captured.err

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
    kl_total = sum(v for k, v in history[1].items() if k.startswith("kl/"))
    assert f"kl {kl_total:.3f}" in line

    for name in ("config.yaml", "training_curves.png", "ranked_results.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["folder"]["main"]["mAP"] <= 1.0
    # The RunResult is what was written.
    assert result.output_dir == out and result.results == results
    assert result.history == history and result.evaluation["folder"].table() == results["folder"]
    assert list(result.model.branch_names) == ckpt["branches"]

    # The deployed weights load strictly into torchreid's own MobileNetV2.
    plain = trmodels.build_model("mobilenetv2_x1_0", 6, pretrained=False)
    plain.load_state_dict(torch.load(out / "deployed.pth", weights_only=True), strict=True)


def _files(folder):
    """The run's files (an evaluation's lock on eval/, ``.eval.lock``, is not one)."""
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))
    }


@pytest.mark.slow  # two trainings and two evaluations: about 30 s on 2 CPU cores
def test_resume_continues_with_the_checkpoint_recipe(tiny_reid, tmp_path, capsys):
    out = tmp_path / "run"
    train_tiny(tiny_reid, out, "train.max_epoch=1", "loss.mode=dsl")
    first = torch.load(out / "checkpoint.pth", weights_only=True)
    assert first["epoch"] == 1
    capsys.readouterr()
    # Resumed without repeating loss.mode=dsl: the checkpoint's recipe carries on.
    resume = ["--resume", str(out / "checkpoint.pth")]
    assert train_tool.main([*resume, "train.max_epoch=2"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "resuming" in printed and "epoch 1/2" not in printed and "epoch 2/2" in printed
    assert (
        "loss dsl" in printed and "changed by the command line: train.max_epoch: 1 -> 2" in printed
    )
    assert "warning" not in captured.err  # the frozen epoch is over
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["loss"]["mode"] == "dsl"
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert not [k for k in ckpt["history"][1] if k.startswith("kl/")]  # still deep supervision
    assert ckpt["scheduler"]["last_epoch"] == 2
    assert "mode: dsl" in (out / "config.yaml").read_text()

    # --eval-only writes into eval/ beside the checkpoint; the training files stay as they are.
    training = _files(out)
    assert (
        train_tool.main([*resume, "--eval-only", "test.per_branch=true", "test.ranks=[1,500]"]) == 0
    )
    printed = capsys.readouterr().out
    assert "mAP" in printed and "epoch 1/" not in printed and "R500" in printed
    rows = [line.split()[0] for line in printed.splitlines() if line.startswith(("main ", "aux"))]
    assert rows == ["main", "aux1", "aux2"]  # paper Table 5: every branch evaluated
    assert _files(out) == training
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["folder"]) == {"main", "aux1", "aux2"}
    assert (
        results["checkpoint"] == str(out / "checkpoint.pth") and results["checkpoint_epochs"] == 2
    )
    # A rank beyond the gallery size is the CMC's last value, not an IndexError.
    main = results["folder"]["main"]
    assert main["rank500"] >= main["rank1"] and main["rank500"] <= 1.0
    assert (out / "eval" / "config.yaml").read_text().startswith(f"# evaluation of {out}")
    assert not (out / "eval" / "checkpoint.pth").exists()

    # Resuming a finished checkpoint evaluates it and leaves it as it was (epoch 2, not 1).
    assert train_tool.main(resume) == 0
    assert "has already trained 2 epochs" in capsys.readouterr().out
    assert _files(out) == training
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_a_new_run_keeps_the_earlier_run_in_its_folder(tiny_reid, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(tiny_reid, out, "train.max_epoch=1", "train.fixbase_epoch=0") == 0
    first = _files(out)
    capsys.readouterr()
    # The same command again: the first run's checkpoint must not be overwritten.
    assert run_train(tiny_reid, out, "train.max_epoch=1", "train.fixbase_epoch=0") == 0
    (kept,) = tmp_path.glob("run.*")
    assert f"{out} held an earlier run; kept it as {kept}" in capsys.readouterr().out
    assert _files(kept) == first
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()].count("run") == 1


def test_resume_refuses_another_dataset_and_model(tiny_checkpoint, capsys):
    resume = ["--resume", str(tiny_checkpoint)]
    assert train_tool.main([*resume, "--dataset", "synthreid", "train.max_epoch=2"]) == 2
    assert "trained on 'folder'" in capsys.readouterr().err
    assert train_tool.main([*resume, "--dataset", "cifar10", "--eval-only"]) == 2
    assert "cannot be evaluated on the classification dataset" in capsys.readouterr().err
    assert train_tool.main([*resume, "--model", "dhm_resnet50", "--eval-only"]) == 2
    assert "holds a 'dhm_mobilenetv2' model" in capsys.readouterr().err


def test_torchreid_checkpoints_resume_with_the_model_named(
    tiny_reid, tiny_checkpoint, tmp_path, capsys
):
    from torchreid.reid.utils import save_checkpoint as torchreid_save

    from reid_dhm.models.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(tiny_checkpoint)
    state = {
        "state_dict": torch.nn.DataParallel(model).state_dict(),  # module. prefixes
        "epoch": 1,
        "rank1": np.float64(0.25),  # torchreid stores numpy scalars
        "optimizer": build_optimizer(model).state_dict(),
    }
    torchreid_save(state, str(tmp_path / "tr"))
    path = next((tmp_path / "tr").glob("model.pth.tar-*"))
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--resume", str(path), "--eval-only"]
    sizes = ["data.height=64", "data.width=32", "data.workers=0", "test.vis_queries=0"]
    assert train_tool.main(argv + sizes) == 2  # the config's model (dhm_resnet50) does not fit
    err = capsys.readouterr().err
    assert "not a reid_dhm checkpoint" in err and "--model" in err and "Traceback" not in err
    assert train_tool.main(argv + sizes + ["--model", "dhm_mobilenetv2"]) == 0
    assert "mAP" in capsys.readouterr().out
    assert json.loads((tmp_path / "tr" / "eval" / "results.json").read_text())["folder"]


def test_unreadable_image_in_a_loader_worker_is_named(tiny_reid, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_reid, root)
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: data.find(b"\xff\xda") + 20])  # header intact, pixels cut off
    extra = ["train.max_epoch=1", "train.fixbase_epoch=0", "data.workers=1"]
    code = run_train(root, tmp_path / "out", *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert victim.name in err and "DataLoader worker" not in err


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
    engine = Trainer(
        ReidTask(manager), model, DHMLoss(), optimizer, build_scheduler(optimizer), max_epoch=2,
        branch_sampler=BranchSampler(model.branch_names), hooks=[FreezeHook(1)],
    )  # fmt: skip
    before = _snapshot(model)
    engine.train_epoch(0)
    changed = _changed(before, model)
    backbone = {k for k in before if k.split(".")[0] in model.pretrained_module_names()}
    assert backbone and not (changed & backbone)  # weights AND BN running stats fixed
    assert any(k.startswith("aux_branches.aux1.") for k in changed)
    assert any(k.startswith("aux_branches.aux2.") for k in changed)
    assert {"classifier.weight", "classifier.bias"} <= changed
    assert all(p.requires_grad is False for p in model.conv1.parameters())

    before = _snapshot(model)
    engine.train_epoch(1)
    changed = _changed(before, model)
    assert "conv1.conv.weight" in changed and "conv1.bn.running_mean" in changed
    assert all(p.requires_grad for p in model.parameters())
    assert [h["frozen"] for h in engine.history] == [True, False]


def test_every_term_is_reported_and_the_active_set_honoured(tiny_reid):
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=8, workers=0
    )
    model = build_model("dhm_mobilenetv2", manager.num_train_pids)
    engine = Trainer(ReidTask(manager), model, DHMLoss(), build_optimizer(model), max_epoch=1)
    images, pids = engine.task.unpack(next(iter(manager.train_loader)))
    assert engine.train_step(images, pids)
    terms = set(engine.sums)
    assert {"loss", "ce/main", "ce/aux1", "ce/aux2", "kl/aux2->aux1", "acc/main"} <= terms
    assert sum(k.startswith("kl/") for k in terms) == 6
    engine.active = ("main", "aux2")
    model.set_active_branches(engine.active)
    _, losses = engine.forward_loss(images, pids)
    assert "ce/aux1" not in losses and "kl/aux2->main" in losses


def test_baseline_runs_only_the_main_branch(tiny_reid):
    """One rule for both tasks: branches without a loss term are not computed."""
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=8, workers=0
    )
    model = build_model("dhm_mobilenetv2", manager.num_train_pids)
    calls = []
    model.aux_branches["aux1"].register_forward_hook(lambda *a: calls.append(1))
    engine = Trainer(
        ReidTask(manager), model, DHMLoss("baseline"), build_optimizer(model), max_epoch=1,
        branch_sampler=BranchSampler(model.branch_names),
    )  # fmt: skip
    record = engine.train_epoch(0)
    assert record["active"] == ["main"] and not calls
    assert not [k for k in record if k.startswith(("ce/aux", "kl/", "acc/aux"))]


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


def test_an_empty_shard_gives_empty_features_of_the_right_width():
    from reid_dhm.inference import extract_loader_features

    model = build_model("dhm_mobilenetv2", 4)
    feats, pids, camids, paths = extract_loader_features(model, [], ("main", "aux1"))
    dims = model.branch_feature_dims()
    for branch in ("main", "aux1"):
        assert feats[branch].shape == (0, dims[branch]) and feats[branch].dtype == torch.float32
    assert pids.shape == camids.shape == (0,) and paths == []
    # It concatenates with another process's shard as DDP's gather does.
    other = model.eval()(torch.randn(2, 3, 64, 32))
    assert torch.cat([feats["main"], other]).shape == (2, dims["main"])
