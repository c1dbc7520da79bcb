"""Issue 11: runs that survive NaN, kills and bad images; exact resume; early config errors.

Every numbered case of the issue is a test here (docs/RELIABILITY.md maps them). The
signal and kill tests run real subprocesses and synchronise on the run's own progress
lines, never on time. Runs that only set a case up, or whose point is what the run does,
are library calls (``conftest.run_training``); the one-line errors, exit statuses and
``--resume`` folder discovery go through ``reid-dhm train``'s ``main``.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_training

from reid_dhm import DHMLoss, build_model
from reid_dhm.cli import test as test_tool
from reid_dhm.cli import train as train_tool
from reid_dhm.config import resolve_config
from reid_dhm.engines.classification import ClassificationTask
from reid_dhm.engines.guards import NonFiniteGuard, TrainingDiverged
from reid_dhm.engines.optim import build_optimizer
from reid_dhm.engines.trainer import Trainer

TINY = [
    "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=64", "data.width=32",
    "data.batch_size=4", "data.test_batch_size=16", "data.workers=0", "train.fixbase_epoch=0",
    "test.vis_queries=0",
]  # fmt: skip


def reid_args(root, out, *extra):
    return ["--dataset", "folder", "--root", str(root), "--output-dir", str(out), *TINY, *extra]


def train_tiny(root, out, *extra):
    """The run of ``reid_args`` as a library call; its ``RunResult``."""
    return run_training("folder", [f"data.root={root}", *TINY, *extra], out)


def finite_state(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------ 1. non-finite loss
def test_nonfinite_loss_stops_the_reid_run_and_keeps_the_last_good_checkpoint(
    tiny_reid, tmp_path, capsys
):
    out = tmp_path / "run"
    train_tiny(tiny_reid, out, "train.max_epoch=1")
    good = (out / "checkpoint.pth").read_bytes()
    capsys.readouterr()
    # The learning rate of the report: the loss explodes within a few iterations.
    resume = ["--resume", str(out), "train.max_epoch=4", "optim.name=sgd", "optim.lr=1e6"]
    assert train_tool.main(resume) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged: the loss is") and "\n" not in err
    assert "in epoch " in err and ", iteration " in err and "is untouched" in err
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] < 4 and finite_state(out / "checkpoint.pth")
    if ckpt["epoch"] == 1:  # the loss was already NaN in epoch 2: not a byte changed
        assert (out / "checkpoint.pth").read_bytes() == good
    assert not (out / "deployed.pth").exists() or finite_state(out / "checkpoint.pth")


class NaNEvery(DHMLoss):
    """DHMLoss whose loss is NaN on chosen calls (a stand-in for a poisoned batch)."""

    def __init__(self, bad_calls, **kwargs):
        super().__init__(**kwargs)
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, output, targets, active=None):
        out = super().forward(output, targets, active)
        self.calls += 1
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out


def _classification_engine(criterion, policy, max_skips=10):
    torch.manual_seed(0)
    model = build_model("dhm_cifar_resnet20", 3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0]))] * 6
    engine = Trainer(
        ClassificationTask(batches, None), model, criterion, build_optimizer(model, "sgd", lr=0.01),
        max_epoch=1, guard=NonFiniteGuard(policy, max_skips),
    )  # fmt: skip
    return engine, model


def test_skip_drops_poisoned_batches_and_stops_after_k_in_a_row():
    engine, model = _classification_engine(NaNEvery({2, 5}, mode="dhm"), "skip")
    bn = model.bn1.running_mean.clone()
    record = engine.train_epoch(0)
    assert record["skipped_batches"] == 2 and math.isfinite(record["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.bn1.running_mean, bn)  # the good batches did train
    engine, _ = _classification_engine(NaNEvery({3, 4, 5}, mode="dhm"), "skip", max_skips=3)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, iteration 5 .*3 non-finite batches"):
        engine.train_epoch(0)
    # 'stop' (the default) names the first bad iteration.
    engine, _ = _classification_engine(NaNEvery({4}, mode="dhm"), "stop")
    with pytest.raises(TrainingDiverged, match=r"in epoch 1, iteration 4 "):
        engine.train_epoch(0)


def test_guard_by_itself():
    guard = NonFiniteGuard("skip", max_skips=2, checkpoint="c.pth (epoch 3)")
    assert guard.allow_step(1.0, 1, 1, 0.1) and not guard.allow_step(math.inf, 1, 2, 0.1)
    assert guard.allow_step(0.5, 1, 3, 0.1) and guard.skipped == 1  # the run was reset
    assert not guard.allow_step(math.nan, 1, 4, 0.1)
    with pytest.raises(TrainingDiverged, match=r"c.pth \(epoch 3\), is untouched"):
        guard.allow_step(math.nan, 1, 5, 0.1)
    with pytest.raises(ValueError, match="nonfinite policy"):
        NonFiniteGuard("ignore")


# ------------------------------------------------------------ 2. numbers
@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("1e6", 1e6), ("1e+6", 1e6),
                                         ("1E-3", 1e-3), ("2", 2.0), (".5", 0.5)])  # fmt: skip
def test_learning_rates_in_every_spelling(tmp_path, text, value):
    assert resolve_config("synthreid", overrides=[f"optim.lr={text}"])["optim"]["lr"] == value
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        f"optim:\n  lr: {text}\n  betas: [9e-1, 0.999]\ntrain:\n  max_epoch: 1e1\n"
    )
    cfg = resolve_config("synthreid", yaml_file)
    assert cfg["optim"]["lr"] == value and isinstance(cfg["optim"]["lr"], float)
    assert cfg["optim"]["betas"] == [0.9, 0.999] and cfg["train"]["max_epoch"] == 10


# ------------------------------------------------------------ 6. early config errors
@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "'optim.lr' must be > 0"),
        ("loss.mode=foo", "'loss.mode' must be one of ['baseline', 'dsl', 'dhm'], got 'foo'"),
        ("loss.direction=sideways", "'loss.direction' must be one of"),
        ("model.name=nope", "'model.name' must be one of"),
        ("data.height=1", "'data.height' is 1, but dhm_mobilenetv2 down-samples"),
        ("data.width=7", "'data.width' is 7"),
        ("loss.kl_teachers=some", "'loss.kl_teachers' must be one of ['all', 'deeper', 'main']"),
        ("optim.betas=[0.9, 1.5]", "'optim.betas' must be two numbers in [0, 1)"),
        ("train.nonfinite=ignore", "'train.nonfinite' must be one of ['stop', 'skip']"),
    ],
)
def test_bad_values_fail_before_any_data_loads(tmp_path, capsys, override, message):
    # The data root does not exist: an error about it would mean the data was reached.
    argv = reid_args(tmp_path / "no-data-here", tmp_path / "out", override)
    assert train_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "no-data-here" not in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ 3. bad images
def _copy_with_truncated(tiny_reid, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_reid, root)
    cut = []
    for split in ("bounding_box_train", "bounding_box_test"):
        victim = sorted((root / split).glob("*.jpg"))[-1]  # not a junk (-1) image
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])  # a half-written copy
        cut.append(victim.name)
    return root, cut


def test_truncated_images_are_all_reported_at_load_and_can_be_skipped(tiny_reid, tmp_path, capsys):
    root, cut = _copy_with_truncated(tiny_reid, tmp_path)
    assert train_tool.main(reid_args(root, tmp_path / "a", "train.max_epoch=1")) == 2
    err = capsys.readouterr().err.strip()
    assert "2 unreadable:" in err and all(name in err for name in cut)
    assert "truncated" in err and "data.skip_bad_images=true" in err and "\n" not in err
    with pytest.warns(UserWarning, match=r"leaving out 2 unreadable image\(s\)"):
        result = train_tiny(root, tmp_path / "b", "train.max_epoch=1", "data.skip_bad_images=true")
    written = json.loads((tmp_path / "b" / "results.json").read_text())
    assert written == result.results and "main" in written["folder"]


def test_a_failed_final_evaluation_keeps_the_training_and_says_how_to_finish(
    tiny_reid, tmp_path, capsys, monkeypatch
):
    from reid_dhm.engines.reid_task import ReidTask

    def broken(*args, **kwargs):
        raise ValueError("cannot read image gallery/0001_c1.jpg: broken data stream")

    monkeypatch.setattr(ReidTask, "evaluate", broken)
    out = tmp_path / "run"
    assert train_tool.main(reid_args(tiny_reid, out, "train.max_epoch=1")) == 1
    err = capsys.readouterr().err.strip()
    assert "training finished (1 epochs" in err and "broken data stream" in err
    assert f"--eval-only --resume {out / 'checkpoint.pth'}" in err and "\n" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and "broken data stream" in results["evaluation_error"]
    assert (out / "deployed.pth").is_file()
    monkeypatch.undo()
    assert train_tool.main(["--eval-only", "--resume", str(out / "checkpoint.pth")]) == 0
    assert (out / "eval" / "results.json").is_file()


# ------------------------------------------------------------ 4/5. kills, signals, resume
def _popen(argv, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "reid_dhm", "train", *argv],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run_until(proc, prefix: str, sig: int) -> tuple[int, str]:
    """Send ``sig`` when the run prints a line starting with ``prefix``; its exit and stderr."""
    for line in proc.stdout:
        if line.startswith(prefix):
            proc.send_signal(sig)
            break
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


EXACT = ["train.max_epoch=3", "train.print_freq=1", "train.deterministic=true",
         "data.workers=1"]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tiny_reid, tmp_path):
    # The adaptive KL schedule's running accuracies are state too: they must resume exactly.
    exact = [*EXACT, "loss.kl_schedule=adaptive", "loss.kl_adaptive_decay=0.5"]
    whole = subprocess.run(
        [sys.executable, "-m", "reid_dhm", "train", *reid_args(tiny_reid, tmp_path / "whole"),
         *exact], capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    code, _ = _run_until(
        _popen([*reid_args(tiny_reid, killed), *exact], tmp_path), "epoch 2/3 [2/", signal.SIGKILL
    )
    assert code == -signal.SIGKILL
    assert torch.load(killed / "checkpoint.pth", weights_only=True)["epoch"] in (1, 2)
    resumed = subprocess.run(
        [sys.executable, "-m", "reid_dhm", "train", "--resume", str(killed)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(whole_dir := tmp_path / "whole" / "checkpoint.pth", weights_only=True)
    b = torch.load(killed / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bit for bit
    assert a["metrics"] == b["metrics"]
    trust = a["loss"]["_extra_state"]["kl_trust"]
    assert set(trust) == {"main", "aux1", "aux2"} and 0 < trust["main"] < 1
    assert a["loss"] == b["loss"]
    assert a["history"][-1]["kl_trust/main"] == b["history"][-1]["kl_trust/main"]
    ra = json.loads((whole_dir.parent / "results.json").read_text())["folder"]["main"]
    rb = json.loads((killed / "results.json").read_text())["folder"]["main"]
    assert ra == rb


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_finish_the_iteration_and_say_how_to_resume(tiny_reid, tmp_path, sig):
    out = tmp_path / "run"
    argv = [*reid_args(tiny_reid, out), "train.max_epoch=3", "train.print_freq=1"]
    code, err = _run_until(_popen(argv, tmp_path), "epoch 2/3 [1/", sig)
    assert code == 128 + sig
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(sig).name} in epoch 2 after iteration")
    assert "holds epoch 1 complete" in last and f"--resume {out}" in last
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    # The same command line with --resume auto finishes the run.
    done = subprocess.run(
        [sys.executable, "-m", "reid_dhm", "train", *argv, "--resume", "auto"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resuming from {out / 'checkpoint.pth'}" in done.stdout
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 3


def test_resume_a_folder_skips_a_damaged_checkpoint_and_cleans_stale_writes(
    tiny_reid, tmp_path, capsys
):
    out = tmp_path / "run"
    train_tiny(tiny_reid, out, "train.max_epoch=2")
    # Epoch 2 replaced epoch 1, which was kept as checkpoint.prev.pth.
    assert torch.load(out / "checkpoint.prev.pth", weights_only=True)["epoch"] == 1
    (out / "checkpoint.pth").write_bytes(b"half a checkpoint")
    stale = out / ".checkpoint.pth.x1y2.tmp"
    stale.write_bytes(b"0" * 1000)
    capsys.readouterr()
    assert train_tool.main(["--resume", str(out), "train.max_epoch=3"]) == 0
    captured = capsys.readouterr()
    assert f"skipping {out / 'checkpoint.pth'}" in captured.err
    assert f"resuming from {out / 'checkpoint.prev.pth'}" in captured.out
    assert f"removed {stale}" in captured.out and not stale.exists()
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 3
    # --resume auto in a folder with nothing to resume starts a new run.
    fresh = tmp_path / "fresh"
    assert (
        train_tool.main([*reid_args(tiny_reid, fresh, "train.max_epoch=1"), "--resume", "auto"])
        == 0
    )
    assert "starting a new run" in capsys.readouterr().out
    assert train_tool.main(["--resume", str(tmp_path / "empty-dir-x")]) == 2
    (tmp_path / "empty").mkdir()
    assert train_tool.main(["--resume", str(tmp_path / "empty")]) == 2
    assert "holds no readable checkpoint" in capsys.readouterr().err


def test_an_lr_given_on_resume_is_used(tiny_reid, tmp_path):
    out = tmp_path / "run"
    train_tiny(tiny_reid, out, "train.max_epoch=1")
    resumed = ["train.max_epoch=2", "optim.lr=1e-5"]
    result = run_training(None, resumed, resume=out / "checkpoint.pth")
    history = torch.load(out / "checkpoint.pth", weights_only=True)["history"]
    assert history[0]["lr"] == pytest.approx(3e-4) and history[1]["lr"] == pytest.approx(1e-5)
    assert result.history == history


# ------------------------------------------------------------ 7. --device reaches the ranking
def test_the_device_reaches_the_ranking(tiny_checkpoint, tiny_reid, monkeypatch, capsys):
    # ``reid-dhm test`` and ``train --eval-only`` rank through the one evaluator.
    import reid_dhm.retrieval.result as result

    seen = []
    real = result.evaluate

    def spy(*args, **kwargs):
        seen.append(str(kwargs.get("device")))
        return real(*args, **kwargs)

    monkeypatch.setattr(result, "evaluate", spy)
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root",
            str(tiny_reid), "--workers", "0", "--device", "cpu"]  # fmt: skip
    assert test_tool.main(argv) == 0 and seen == ["cpu"]
    seen.clear()
    # An evaluation-only run ranks on the run's device (train.device; auto is the CPU here).
    run_training(None, [], resume=tiny_checkpoint, eval_only=True)
    assert seen == ["cpu"]


# ------------------------------------------------------------ 8. wording and weight
def test_unsafe_pickles_are_refused_for_safety(tmp_path):
    from reid_dhm.retrieval import GalleryIndex
    from reid_dhm.utils.checkpoint import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    path = tmp_path / "crafted.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(ValueError, match="refused for safety.*could run code") as info:
        load_checkpoint(path)
    assert "damaged" not in str(info.value)
    noise = tmp_path / "random.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for bad in (noise, tmp_path / "obj.npy"):
        if bad.suffix == ".npy":
            np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        with pytest.raises(ValueError, match="not a GalleryIndex file") as info:
            GalleryIndex.load(bad)
        assert "allow_pickle" not in str(info.value) and "unsafely" not in str(info.value)


def test_import_reid_dhm_is_light():
    heavy = "('torchreid', 'tensorboard', 'torchvision', 'faiss', 'cv2', 'matplotlib', 'boxmot')"
    code = f"import sys, reid_dhm; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
