"""Several runs of one recipe with seeds ``train.seed + i``: mean and std of the errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..utils.branches import MAIN
from .errors import UsageError

COLUMNS = ("top1_err", "top5_err", "best_top1_err")


def summarize_seeds(rows: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of each error column."""
    out = {}
    for key in COLUMNS:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std}
    return out


def train_seeds(cfg: Mapping, count: int) -> dict:
    """``count`` classification runs in ``output_dir/seed<i>``; writes ``seeds.json``.

    Returns:
        The summary: per-seed rows and mean +- std of each error column.
    """
    from ..engines import distributed as dist
    from .training import check_before_training, run_in_process

    if cfg["task"] != "classification":
        raise UsageError("--seeds is available for classification datasets only")
    if count < 1:
        raise UsageError(f"--seeds must be at least 1, got {count}")
    check_before_training(cfg, None, False)
    info = dist.init_distributed(cfg["train"]["device"])
    ok = False
    try:
        rows = [_one_seed(cfg, i, count, info, run_in_process) for i in range(count)]
        ok = True
    finally:
        dist.cleanup(barrier=ok)  # after a failure torchrun stops the other ranks
    summary = {
        "dataset": cfg["data"]["dataset"], "model": cfg["model"]["name"],
        "mode": cfg["loss"]["mode"], "seeds": count, "runs": rows, **summarize_seeds(rows),
    }  # fmt: skip
    if info.is_main:
        _report(summary, Path(cfg["output_dir"]))
    return summary


def _one_seed(cfg: Mapping, i: int, count: int, info, run_in_process) -> dict:
    run = copy.deepcopy(dict(cfg))
    run["train"]["seed"] += i
    run["branch_sampling"]["seed"] += i  # Bernoulli branch draws differ per seed too
    run["output_dir"] = str(Path(cfg["output_dir"]) / f"seed{i}")
    if info.is_main:
        print(f"=> seed {run['train']['seed']} ({i + 1}/{count}) -> {run['output_dir']}")
    res = run_in_process(run, info, None, False).results
    return {
        "seed": run["train"]["seed"],
        "output_dir": run["output_dir"],
        "top1_err": res["final"][MAIN]["top1_err"],
        "top5_err": res["final"][MAIN]["top5_err"],
        "best_top1_err": res["best"]["top1_err"],
        "best_epoch": res["best"]["epoch"],
    }


def _report(summary: dict, base: Path) -> None:
    from ..utils.io import atomic_write_text

    rows, count = summary["runs"], summary["seeds"]
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


__all__ = ["summarize_seeds", "train_seeds"]
