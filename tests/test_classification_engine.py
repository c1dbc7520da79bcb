"""Classification engine, runs and CLI on a tiny CIFAR-10 folder in the real pickle layout.

Runs are library calls (``reid_dhm.runs.train`` / ``train_seeds``); the tests whose point
is the command line (resume flags, ``--eval-only`` into ``eval/``, one-line errors and
exit statuses) call ``reid-dhm train``'s ``main``.
"""

import json
import math
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_config, run_training
from torch.utils.data import DataLoader, TensorDataset

from reid_dhm import BranchSampler, DHMLoss, build_model
from reid_dhm.cli import train as train_tool  # noqa: E402
from reid_dhm.data.classification import CIFAR10_MEAN, CIFAR10_STD, read_cifar
from reid_dhm.engines.amp import check_amp
from reid_dhm.engines.classification import ClassificationTask, topk_correct
from reid_dhm.engines.guards import TrainingDiverged
from reid_dhm.engines.hooks import CheckpointHook, standard_hooks
from reid_dhm.engines.optim import build_optimizer, build_scheduler, check_schedule
from reid_dhm.engines.trainer import Trainer
from reid_dhm.models.checkpoint import model_from_checkpoint

TINY = [
    "data.batch_size=20",
    "data.test_batch_size=8",
    "data.workers=0",
    "optim.lr=0.02",
]


def run_train(root, out, *extra):
    """``reid-dhm train`` (the command line) on a CIFAR-10 folder; its exit status."""
    argv = ["--dataset", "cifar10", "--root", str(root), "--output-dir", str(out)]
    return train_tool.main(argv + TINY + list(extra))


def train_tiny(root, out, *extra):
    """The same run as a library call; its ``RunResult``."""
    return run_training("cifar10", [f"data.root={root}", *TINY, *extra], out)


def rank_based_errors(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Top-1 / top-5 error (%) from each target's rank: #classes scoring strictly higher."""
    target_scores = logits[np.arange(len(targets)), targets]
    rank = (logits > target_scores[:, None]).sum(1)
    return 100.0 * float((rank >= 1).mean()), 100.0 * float((rank >= 5).mean())


def independent_eval(checkpoint: Path, root: Path, branch: str = "main"):
    """Errors of a checkpoint on the test split: raw pickle pixels normalised by hand."""
    model = model_from_checkpoint(checkpoint).eval()
    images, labels, _ = read_cifar("cifar10", root, train=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        logits = model.forward_branches(x, (branch,)).logits[branch].numpy()
    return rank_based_errors(logits, labels)


# ------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("num_classes", [10, 3])
def test_topk_correct_matches_a_rank_count(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(64, num_classes, generator=g)
    targets = torch.randint(0, num_classes, (64,), generator=g)
    counts = topk_correct(logits, targets, (1, 5)).tolist()
    err1, err5 = rank_based_errors(logits.numpy(), targets.numpy())
    assert counts[0] == round(64 * (1 - err1 / 100))
    assert counts[1] == round(64 * (1 - err5 / 100))
    if num_classes <= 5:
        assert counts[1] == 64  # top-5 of 3 classes always hits


# --------------------------------------------------------------------------- end to end
def test_two_epoch_run_writes_checkpoints_best_and_correct_errors(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["model.name=dhm_cifar_resnet20", "train.max_epoch=2", "test.per_branch=true"]
    result = train_tiny(tiny_cifar10, out, *args)
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "top1 err" in printed
    line = next(x for x in printed.splitlines() if x.startswith("epoch 2/2  "))
    # CE per branch (main/aux1/aux2) and the KL total, within 120 columns.
    assert re.search(r"  ce [\d.]+/[\d.]+/[\d.]+  kl [\d.]+  ", line) and "kl/" not in line
    assert len(line) <= 120

    for name in ("checkpoint.pth", "best.pth", "config.yaml", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind

    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "dhm_cifar_resnet20"
    assert ckpt["config"]["task"] == "classification" and ckpt["num_classes"] == 10
    assert ckpt["scheduler"]["last_epoch"] == 2 and ckpt["optimizer"]["state"]
    history = ckpt["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("loss", "ce/main", "ce/aux1", "kl/aux1->main", "acc/aux2", "test/top1_err"):
        assert key in history[1], key
    assert "test/aux1/top1_err" in history[1]

    # results.json = an independent evaluation of the final weights.
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "cifar10" and results["epochs"] == 2
    final = results["final"]
    assert set(final) == {"main", "aux1", "aux2"} and final["main"]["num_images"] == 20
    for branch in ("main", "aux2"):
        top1, top5 = independent_eval(out / "checkpoint.pth", tiny_cifar10, branch)
        assert final[branch]["top1_err"] == pytest.approx(top1, abs=1e-9)
        assert final[branch]["top5_err"] == pytest.approx(top5, abs=1e-9)

    # best.pth is the first epoch with the lowest main top-1 error.
    errors = [h["test/top1_err"] for h in history]
    best_epoch = int(np.argmin(errors)) + 1
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["epoch"] == best_epoch == results["best"]["epoch"]
    assert best["best"]["top1_err"] == pytest.approx(min(errors))
    top1, _ = independent_eval(out / "best.pth", tiny_cifar10)
    assert top1 == pytest.approx(min(errors), abs=1e-9)

    # The RunResult is what was written.
    assert result.output_dir == out and result.results == results
    assert result.history == history and result.evaluation == final


def _files(folder):
    """The run's files (an evaluation's lock on eval/, ``.eval.lock``, is not one)."""
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))
    }


def test_resume_keeps_the_recipe_and_evaluations_write_apart(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    train_tiny(
        tiny_cifar10, out, "model.name=dhm_cifar_resnet20", "loss.mode=dsl", "train.max_epoch=1"
    )
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    capsys.readouterr()
    # Resumed without repeating the model or loss.mode=dsl: the checkpoint's recipe carries on.
    resume = ["--resume", str(out / "checkpoint.pth")]
    assert train_tool.main([*resume, "train.max_epoch=2"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "epoch 1/2" not in printed and "epoch 2/2" in printed
    assert "loss dsl" in printed and "train.max_epoch: 1 -> 2" in printed
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert ckpt["scheduler"]["last_epoch"] == 2 and ckpt["config"]["loss"]["mode"] == "dsl"
    assert not [k for k in ckpt["history"][1] if k.startswith("kl/")]

    # --eval-only writes into eval/ beside the checkpoint and leaves the training run alone.
    training = _files(out)
    assert train_tool.main([*resume, "--eval-only"]) == 0
    assert "top1 err" in capsys.readouterr().out
    assert _files(out) == training
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["checkpoint"] == str(out / "checkpoint.pth")
    assert results["checkpoint_epochs"] == 2
    top1, top5 = independent_eval(out / "checkpoint.pth", tiny_cifar10)
    assert results["final"]["main"]["top1_err"] == pytest.approx(top1, abs=1e-9)
    assert results["final"]["main"]["top5_err"] == pytest.approx(top5, abs=1e-9)
    assert not (out / "eval" / "checkpoint.pth").exists()

    # A finished checkpoint resumed: evaluated only, nothing of the training run rewritten.
    assert train_tool.main(resume) == 0
    assert "has already trained 2 epochs" in capsys.readouterr().out
    assert _files(out) == training


def test_seeds_report_mean_and_std(tiny_cifar10, tmp_path, capsys):
    from reid_dhm.runs.seeds import train_seeds

    out = tmp_path / "seeds"
    args = ["model.name=cifar_resnet20", "loss.mode=baseline", "train.max_epoch=1"]
    cfg, _ = run_config("cifar10", [f"data.root={tiny_cifar10}", *TINY, *args, "train.seed=7"], out)
    returned = train_seeds(cfg, 2)
    assert "+-" in capsys.readouterr().out
    summary = json.loads((out / "seeds.json").read_text())
    assert returned == summary
    assert [r["seed"] for r in summary["runs"]] == [7, 8]
    errors = []
    for i in range(2):
        res = json.loads((out / f"seed{i}" / "results.json").read_text())
        assert res["seed"] == 7 + i
        errors.append(res["final"]["main"]["top1_err"])
    assert summary["top1_err"]["mean"] == pytest.approx(np.mean(errors))
    assert summary["top1_err"]["std"] == pytest.approx(np.std(errors, ddof=1))


def _bad_pickle_root(tmp_path: Path, make_cifar10_folder) -> Path:
    root = make_cifar10_folder(tmp_path / "bad", per_batch=2, n_test=2)
    # Right file name, wrong layout: 100 bytes per image instead of 3 * 32 * 32.
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    return root


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing", [], "cifar10 not found"),
        ("bad_pickle", [], "must be uint8 of shape (N, 3072)"),
        ("ok", ["--seeds", "0"], "--seeds must be at least 1"),
        ("ok", ["train.amp=fp16", "train.device=cpu"], "amp='fp16' needs a CUDA device"),
        ("ok", ["data.transforms=[random_erase]"], "data.transforms"),
        ("ok", ["data.batch_size=0"], "'data.batch_size' must be >= 1"),
        ("ok", ["--seeds", "1", "train.max_epoch=0"], "'train.max_epoch' must be >= 1"),
        ("ok", ["scheduler.gamma=0"], "scheduler.gamma must be > 0"),
        ("ok", ["test.metric=cosine"], "'test.metric' is only read by re-ID runs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case, extra, message, tiny_cifar10, make_cifar10_folder, tmp_path, capsys
):
    if case == "bad_pickle":
        root = _bad_pickle_root(tmp_path, make_cifar10_folder)
    else:
        root = tmp_path / "nowhere" if case == "missing" else tiny_cifar10
    code = run_train(root, tmp_path / "out", "--model", "cifar_resnet20", *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert "Traceback" not in err


def test_data_limit_trains_on_an_even_subset(tiny_cifar10, tmp_path):
    """data.limit / data.test_limit wrap the sets in a Subset; the epoch-seeded loader
    must index the Subset with plain indices (it used to hand it (epoch, index) pairs)."""
    run = train_tiny(
        tiny_cifar10, tmp_path / "run", "train.max_epoch=1", "scheduler.milestones=[1]",
        "data.limit=10", "data.test_limit=6", "data.batch_size=5",
    )  # fmt: skip
    assert run.results["final"]["main"]["num_images"] == 6
    assert run.history[0]["epoch"] == 1 and np.isfinite(run.history[0]["loss"])


def test_seeds_is_refused_for_reid(tmp_path, capsys):
    assert train_tool.main(["--dataset", "synthreid", "--seeds", "2"]) == 2
    assert "classification datasets only" in capsys.readouterr().err


# ------------------------------------------------------------------------ engine direct
def _tiny_engine(
    criterion=None, amp="none", model_name="dhm_cifar_resnet20", schedule=None, max_epoch=1,
    eval_freq=1, save_dir=None,
):  # fmt: skip
    """The shared training loop on the classification task, as a run builds it."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 4)
    model = build_model(model_name, 4)
    optimizer = build_optimizer(model, "sgd", lr=0.01, weight_decay=0.0, momentum=0.9)
    task = ClassificationTask(
        DataLoader(data, batch_size=6), DataLoader(data, batch_size=6), amp=amp
    )
    hooks = standard_hooks(
        save_dir=save_dir, model_name=model_name, config=None, is_main=True, tensorboard=False,
        log=lambda line: None,
    )  # fmt: skip
    return Trainer(
        task, model, criterion or DHMLoss("dhm"), optimizer,
        build_scheduler(optimizer, **(schedule or {"name": "constant"})), max_epoch=max_epoch,
        branch_sampler=BranchSampler(model.branch_names), amp=amp, eval_freq=eval_freq,
        hooks=hooks,
    )  # fmt: skip


def test_bf16_autocast_on_cpu_trains():
    engine = _tiny_engine(amp="bf16")
    dtypes = set()
    engine.bare.register_forward_hook(
        lambda module, args, out: dtypes.update(z.dtype for z in out.logits.values())
    )
    record = engine.train_epoch(0)
    assert dtypes == {torch.bfloat16}  # the forward really ran under bf16 autocast
    assert np.isfinite(record["loss"]) and "kl/aux2->main" in record
    table = engine.task.evaluate(engine.model)
    assert table["main"]["num_images"] == 12


def test_amp_modes_are_checked():
    assert check_amp("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown amp mode"):
        check_amp("fp8", torch.device("cpu"))


def test_baseline_mode_computes_and_records_only_main():
    engine = _tiny_engine(DHMLoss("baseline"))
    record = engine.train_epoch(0)
    assert record["active"] == ["main"]
    assert not [k for k in record if k.startswith(("ce/aux", "kl/", "acc/aux"))]


def test_non_finite_loss_stops_training_with_a_clear_error():
    class NaNLoss(DHMLoss):
        def forward(self, output, targets, active=None):
            out = super().forward(output, targets, active)
            return OrderedDict(out, loss=out["loss"] * float("nan"))

    engine = _tiny_engine(NaNLoss("dhm"))
    with pytest.raises(TrainingDiverged, match="training diverged"):
        engine.train_epoch(0)


def test_eval_freq_and_best_without_save_dir():
    engine = _tiny_engine(max_epoch=3, eval_freq=2, model_name="cifar_resnet20")
    engine.train()
    results = engine.task.results(engine)
    evaluated = [h["epoch"] for h in engine.history if "test/top1_err" in h]
    assert evaluated == [2, 3]  # every 2nd epoch and always the last
    assert results["best"]["epoch"] in evaluated and results["epochs"] == 3


@pytest.mark.parametrize("name", ["dhm_cifar_resnet20", "resnet18", "dhm_wrn16_8"])
def test_checkpoints_of_registry_partials_rebuild(name, tmp_path):
    from reid_dhm.models.checkpoint import save_checkpoint

    model = build_model(name, 7)
    save_checkpoint(tmp_path / "c.pth", model, name, 1)
    again = model_from_checkpoint(tmp_path / "c.pth")
    assert type(again) is type(model) and again.branch_names == model.branch_names
    for a, b in zip(again.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- lr schedules
# Factor of the lr in each 0-based epoch of a 6-epoch run (DESIGN 3: the lr changes at
# epoch boundaries only, never within an epoch).
SCHEDULES = {
    "multi_step": ({"name": "multi_step", "milestones": [2, 4]}, [1, 1, 0.1, 0.1, 0.01, 0.01]),
    "step": ({"name": "step", "step_size": 2, "gamma": 0.5}, [1, 1, 0.5, 0.5, 0.25, 0.25]),
    "cosine": ({"name": "cosine"}, [0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]),
    "warmup": (
        {"name": "multi_step", "milestones": [4], "warmup_epochs": 2},
        [1 / 3, 2 / 3, 1, 1, 0.1, 0.1],
    ),
    "cosine_warmup": (
        {"name": "cosine", "warmup_epochs": 2},
        [
            1 / 3,
            2 / 3,
            1,
            0.5 * (1 + math.cos(math.pi / 4)),
            0.5,
            0.5 * (1 + math.cos(0.75 * math.pi)),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lr_per_epoch_is_pinned_across_a_resume(name):
    schedule, factors = SCHEDULES[name]

    def fresh():
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        return opt, build_scheduler(opt, max_epoch=6, **schedule)

    optimizer, scheduler = fresh()
    lrs = []
    for epoch in range(6):
        if epoch == 3:  # stop after 3 epochs, resume from the saved states
            saved = optimizer.state_dict(), scheduler.state_dict()
            optimizer, scheduler = fresh()
            optimizer.load_state_dict(saved[0])
            scheduler.load_state_dict(saved[1])
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1 * f for f in factors], rel=1e-12)

    # Resuming weights without a scheduler state (another tool's checkpoint) puts the
    # schedule at the same place.
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    build_scheduler(opt, max_epoch=6, start_epoch=3, **schedule)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factors[3], rel=1e-12)


def test_engine_changes_the_lr_at_epoch_boundaries_only_across_a_resume(tmp_path):
    schedule, factors = SCHEDULES["warmup"]
    seen = []

    def engine_with_probe():
        engine = _tiny_engine(
            schedule={**schedule, "max_epoch": 6}, max_epoch=6, model_name="cifar_resnet20",
            save_dir=tmp_path,
        )  # fmt: skip
        engine.bare.register_forward_pre_hook(
            lambda *_: (
                seen.append(engine.optimizer.param_groups[0]["lr"])
                if engine.bare.training
                else None
            )
        )
        return engine

    first = engine_with_probe()
    for epoch in range(3):
        first.train_epoch(epoch)
    next(h for h in first.hooks if isinstance(h, CheckpointHook)).save("checkpoint.pth")
    second = engine_with_probe()
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    second.load_state_dict(state)
    second.history = list(state["history"])
    second.train(state["epoch"])
    expected = [0.01 * f for f in factors]
    assert seen == pytest.approx([lr for lr in expected for _ in range(2)], rel=1e-12)  # 2 steps
    assert [h["lr"] for h in second.history] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "schedule, match",
    [
        ({"name": "multi_step", "gamma": -1.0}, "scheduler.gamma must be > 0"),
        ({"name": "step", "gamma": 0.0}, "scheduler.gamma must be > 0"),
        ({"name": "multi_step", "milestones": [-1]}, "scheduler.milestones must be epochs >= 1"),
        ({"name": "cosine", "warmup_epochs": -2}, "scheduler.warmup_epochs must be >= 0"),
        ({"name": "cosine", "warmup_epochs": 6}, "scheduler.warmup_epochs=6 must be < train"),
        ({"name": "step", "step_size": 0}, "scheduler.step_size must be >= 1"),
        ({"name": "linear"}, "unknown scheduler.name 'linear'"),
    ],
)
def test_bad_schedules_name_the_key(schedule, match):
    with pytest.raises(ValueError, match=match):
        check_schedule(max_epoch=6, **schedule)


def test_classification_train_loader_is_prefetched_on_cuda_only(tiny_cifar10):
    from reid_dhm.config import resolve_config
    from reid_dhm.engines.prefetch import DeviceLoader
    from reid_dhm.runs.tasks import build_datasets, classification_loaders

    cfg = resolve_config("cifar10", None, [f"data.root={tiny_cifar10}", *TINY])
    train_set, test_set, _ = build_datasets(cfg)
    cpu_train, _ = classification_loaders(cfg, train_set, test_set, torch.device("cpu"))
    assert not isinstance(cpu_train, DeviceLoader) and not cpu_train.pin_memory
    # Built (not iterated: no GPU here) for CUDA: pinned, wrapped, same order and length.
    cuda_train, _ = classification_loaders(cfg, train_set, test_set, torch.device("cuda"))
    assert isinstance(cuda_train, DeviceLoader) and cuda_train.pin_memory
    assert cuda_train.device == torch.device("cuda") and len(cuda_train) == len(cpu_train)
    assert cuda_train.sampler.__class__ is cpu_train.sampler.__class__
