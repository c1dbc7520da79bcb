"""Classification runs of ``tools/train.py`` (CIFAR-10/100, ImageNet, Fashion-MNIST).

    python tools/train.py --dataset cifar100 --root data                       # ResNet-32 DHM
    python tools/train.py --config configs/cifar100/resnet110_dsl.yaml --root data
    python tools/train.py --dataset cifar100 --root data --seeds 5             # mean +- std
    python tools/train.py --dataset fashion-mnist --model dhm_cifar_resnet20 train.max_epoch=3
    torchrun --nproc_per_node 4 tools/train.py --dataset imagenet --root /data/imagenet

Config sections become explicit arguments of the library here: the data readers
(``reid_dhm.data.classification``), the model registry, ``DHMLoss``, the optimizer
and schedule, and ``ClassificationEngine``. Under ``torchrun`` every process runs
this same code; ``data.batch_size`` is the global batch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from ..config import CLASSIFICATION_DATASETS
from .common import (
    RunStopped,
    UsageError,
    announce_resume,
    build_branch_sampler,
    build_criterion,
    interrupted_line,
    is_foreign_checkpoint,
    model_for_run,
    needs_unused_parameter_search,
    remove_stale_temporaries,
    resumable_optimizer_state,
    set_deterministic,
    write_config,
)


def _evenly(dataset, n: int):
    """At most ``n`` samples, evenly spaced (class-sorted folders keep every class)."""
    from torch.utils.data import Subset

    if not n or n >= len(dataset):
        return dataset
    index = np.linspace(0, len(dataset) - 1, n).round().astype(np.int64).tolist()
    return Subset(dataset, index)


def build_datasets(cfg: dict):
    """``data`` section -> ``(train, test, num_classes)`` through the real readers."""
    from ..data.classification import build_classification_datasets, default_transform

    d = cfg["data"]
    name = d["dataset"]
    if name not in CLASSIFICATION_DATASETS:
        raise UsageError(f"{name!r} is not a classification dataset {CLASSIFICATION_DATASETS}")
    if d["height"] != d["width"]:
        raise UsageError(
            f"classification models take square images; data.height={d['height']} and "
            f"data.width={d['width']} differ"
        )
    transforms = list(d["transforms"])
    if not transforms:  # no augmentation: train on the evaluation transform
        train_transform = default_transform(name, False, d["height"])
    elif sorted(transforms) == ["random_crop", "random_flip"]:
        train_transform = None  # the paper's augmentation for this data set
    else:
        raise UsageError(
            f"data.transforms={transforms}: classification takes the paper's augmentation "
            f"[random_flip, random_crop] or none ([])"
        )
    train, test, num_classes = build_classification_datasets(
        name, d["root"], train_transform=train_transform, image_size=d["height"]
    )
    return _evenly(train, d["limit"]), _evenly(test, d["test_limit"]), num_classes


def _loaders(cfg: dict, train_set, test_set, device):
    from torch.utils.data import DataLoader

    from ..engines import distributed as dist
    from ..engines.seeding import EpochIndexSampler, EpochSeededDataset, ignore_sigint

    d = cfg["data"]
    seed = cfg["train"]["seed"]
    batch = dist.per_process_batch(d["batch_size"])
    sampler = dist.train_sampler(train_set, shuffle=True, seed=seed)
    common = dict(
        num_workers=d["workers"],
        pin_memory=device.type == "cuda",
        persistent_workers=d["workers"] > 0,
        worker_init_fn=ignore_sigint,
    )
    # A last batch of one sample breaks BatchNorm in training mode: drop it then.
    # Augmentation is seeded per (seed, epoch, sample): resumed runs draw the same.
    train_loader = DataLoader(
        EpochSeededDataset(train_set, seed),
        batch_size=batch,
        sampler=EpochIndexSampler(sampler),
        drop_last=len(sampler) % batch == 1,
        **common,
    )
    test_loader = DataLoader(
        test_set, batch_size=d["test_batch_size"], sampler=dist.eval_sampler(test_set), **common
    )
    return train_loader, test_loader


def train_one(cfg: dict, args, info, ckpt=None) -> dict:
    """One training (or ``--eval-only``) run in ``cfg['output_dir']``; returns its results.

    ``ckpt``: the loaded ``--resume`` checkpoint, or None.
    """
    from ..engines import distributed as dist
    from ..engines.classification import ClassificationEngine, format_table
    from ..engines.guards import TrainingInterrupted
    from ..engines.optim import build_optimizer, build_scheduler, set_base_lr
    from ..utils.device import seed_everything
    from ..utils.rng import restore_rng_state

    out = Path(cfg["output_dir"])
    train, test = cfg["train"], cfg["test"]
    # Rank offset: ranks draw different augmentations; DDP copies rank 0's initial weights.
    seed_everything(train["seed"] + info.rank)
    if train["deterministic"]:
        set_deterministic()
    if info.is_main:
        for stale in remove_stale_temporaries(out):
            print(f"=> removed {stale}, left by an interrupted write")
    train_set, test_set, num_classes = build_datasets(cfg)
    model, model_name = model_for_run(cfg, args.resume, ckpt, num_classes, "classes")
    model = model.to(info.device)
    criterion = build_criterion(cfg)
    sampler = build_branch_sampler(cfg, model.branch_names)
    find_unused = needs_unused_parameter_search(cfg, criterion, model.branch_names)
    wrapped = dist.wrap_model(model, find_unused_parameters=find_unused, sync_bn=train["sync_bn"])
    optimizer = build_optimizer(model, **cfg["optim"])
    start_epoch = int(ckpt.get("epoch") or 0) if ckpt is not None and not args.eval_only else 0
    foreign = ckpt is not None and is_foreign_checkpoint(ckpt)
    scheduler = build_scheduler(
        optimizer,
        max_epoch=train["max_epoch"],
        start_epoch=start_epoch if foreign else 0,
        **cfg["scheduler"],
    )
    run_info = {
        "dataset": cfg["data"]["dataset"],
        "model": model_name,
        "mode": criterion.mode,
        "seed": train["seed"],
    }
    if args.eval_only:
        run_info.update(checkpoint=str(args.resume), checkpoint_epochs=ckpt.get("epoch"))
    train_loader, test_loader = _loaders(cfg, train_set, test_set, info.device)
    engine = ClassificationEngine(
        wrapped,
        criterion,
        optimizer,
        scheduler,
        train_loader=train_loader,
        test_loader=test_loader,
        max_epoch=train["max_epoch"],
        branch_sampler=sampler,
        amp=train["amp"],
        per_branch=test["per_branch"],
        eval_freq=train["eval_freq"],
        print_freq=train["print_freq"],
        fixbase_epoch=train["fixbase_epoch"],
        save_dir=out,
        model_name=model_name,
        config=cfg,
        run_info=run_info,
        is_main_process=info.is_main,
        grad_monitor_every=train["grad_monitor_every"],
        nonfinite=train["nonfinite"],
        nonfinite_max_skips=train["nonfinite_max_skips"],
        should_stop=getattr(args, "should_stop", None),
    )
    if start_epoch:
        if not foreign:
            state = resumable_optimizer_state(cfg, ckpt, say=print if info.is_main else len)
            engine.load_state({**ckpt, "optimizer": state})
            set_base_lr(optimizer, scheduler, cfg["optim"]["lr"])
            restore_rng_state(ckpt.get("rng"))
        if info.is_main:
            announce_resume(args.resume, start_epoch, foreign)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out, evaluated=args.resume if args.eval_only else None)
        print(
            f"=> {cfg['data']['dataset']}: {len(train_set)} training / {len(test_set)} test "
            f"images, {num_classes} classes; {model_name} (branches "
            f"{', '.join(model.branch_names)}), loss {criterion.mode}; "
            f"{info.world_size} process(es) on {info.device}",
            flush=True,
        )
    if args.eval_only:
        results = engine.evaluate_only()
    else:
        try:
            results = engine.run(start_epoch)
        except TrainingInterrupted as stop:
            done = engine.history[-1]["epoch"] if engine.history else start_epoch
            raise RunStopped(interrupted_line(stop, out, done), 128 + stop.signum) from None
        if info.is_main:
            print(format_table(results["final"]))
            best = results["best"]
            if best:
                print(
                    f"best epoch {best['epoch']}: main top-1 error {best['top1_err']:.2f}, "
                    f"top-5 {best['top5_err']:.2f} (best.pth)"
                )
    return results


def summarize_seeds(rows: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of each error column."""
    out = {}
    for key in ("top1_err", "top5_err", "best_top1_err"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std}
    return out


def run_seeds(cfg: dict, args, count: int, info) -> dict:
    """``count`` runs with seeds ``train.seed + i`` in ``output_dir/seed<i>``; mean +- std."""
    base = Path(cfg["output_dir"])
    rows = []
    for i in range(count):
        run = copy.deepcopy(cfg)
        run["train"]["seed"] += i
        run["branch_sampling"]["seed"] += i  # Bernoulli branch draws differ per seed too
        run["output_dir"] = str(base / f"seed{i}")
        if info.is_main:
            print(f"=> seed {run['train']['seed']} ({i + 1}/{count}) -> {run['output_dir']}")
        res = train_one(run, args, info)
        rows.append(
            {
                "seed": run["train"]["seed"],
                "output_dir": run["output_dir"],
                "top1_err": res["final"]["main"]["top1_err"],
                "top5_err": res["final"]["main"]["top5_err"],
                "best_top1_err": res["best"]["top1_err"],
                "best_epoch": res["best"]["epoch"],
            }
        )
    summary = {
        "dataset": cfg["data"]["dataset"],
        "model": cfg["model"]["name"],
        "mode": cfg["loss"]["mode"],
        "seeds": count,
        "runs": rows,
        **summarize_seeds(rows),
    }
    if info.is_main:
        from ..utils.io import atomic_write_text

        lines = [f"{'seed':>6}{'top1 err':>10}{'top5 err':>10}{'best top1':>11}"]
        lines += [
            f"{r['seed']:>6}{r['top1_err']:>10.2f}{r['top5_err']:>10.2f}{r['best_top1_err']:>11.2f}"
            for r in rows
        ]
        t1, t5, b1 = summary["top1_err"], summary["top5_err"], summary["best_top1_err"]
        lines.append(
            f"main-branch test error over {count} seed(s), final epoch: top-1 "
            f"{t1['mean']:.2f} +- {t1['std']:.2f}, top-5 {t5['mean']:.2f} +- {t5['std']:.2f}; "
            f"best epoch top-1 {b1['mean']:.2f} +- {b1['std']:.2f}"
        )
        print("\n".join(lines))
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_text(base / "seeds.json", json.dumps(summary, indent=1))
    return summary


def run_classification(cfg: dict, args, ckpt=None) -> dict:
    """Entry point from ``tools/train.py`` for ``cfg['task'] != 'reid'``.

    ``args`` carries ``resume``, ``eval_only``, ``output_dir``, ``root``,
    ``no_pretrained``, ``overrides`` and optionally ``seeds``; ``ckpt`` is the loaded
    ``--resume`` checkpoint (None without one).
    """
    from ..engines import distributed as dist

    seeds = getattr(args, "seeds", None)
    if seeds is not None:
        if seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {seeds}")
        if args.resume or args.eval_only:
            raise UsageError("--seeds starts fresh runs; drop --resume/--eval-only")
    if cfg["data"]["dataset"] not in CLASSIFICATION_DATASETS:
        raise UsageError(
            f"task {cfg['task']!r} needs a classification dataset {CLASSIFICATION_DATASETS}, "
            f"got {cfg['data']['dataset']!r}"
        )
    info = dist.init_distributed(cfg["train"]["device"])
    ok = False
    try:
        result = (
            run_seeds(cfg, args, seeds, info)
            if seeds is not None
            else train_one(cfg, args, info, ckpt)
        )
        ok = True
        return result
    finally:
        # After a failure, skip the final barrier: torchrun stops the other ranks.
        dist.cleanup(barrier=ok)
