#!/usr/bin/env python
"""Baseline vs DSL vs DHM on real Fashion-MNIST with a CIFAR-style ResNet-20, several seeds.

Every method runs ``reid_dhm.runs.train_seeds`` in this process (what ``reid-dhm train
--dataset fashion-mnist --seeds N`` runs) with the same budget (training subset, epochs,
batch, SGD, warm-up + step schedule); only the model's branch set and the loss mode differ:

* baseline: ``cifar_resnet20`` (no auxiliary branch), CE on the main branch;
* DSL: ``dhm_cifar_resnet20``, CE on main + aux1 + aux2;
* DHM: ``dhm_cifar_resnet20``, CE on every branch + bidirectional KL mimicking.

Reported: the main branch's top-1 error on the full 10k test set after the last
epoch, mean +- sample std over seeds, and the wall time per method (the machine
may be shared: times are indicative only). Needs Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``).

    python benchmarks/bench_fashion_mnist.py --threads 1        # ~30 min on 2 CPU cores
    python benchmarks/bench_fashion_mnist.py --limit 2000 --epochs 1 --seeds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METHODS = {
    "baseline": ["model.name=cifar_resnet20", "loss.mode=baseline"],
    "dsl": ["model.name=dhm_cifar_resnet20", "loss.mode=dsl"],
    "dhm": ["model.name=dhm_cifar_resnet20", "loss.mode=dhm"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 1..N)")
    p.add_argument("--limit", type=int, default=10000, help="training images (evenly spaced)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="linear warm-up epochs")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 avoids thrashing on a shared 2-core box",
    )
    p.add_argument("--output-dir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the summary to this JSON file")
    args = p.parse_args(argv)

    import torch

    from reid_dhm.config import ConfigError, resolve_config
    from reid_dhm.runs.errors import RunStopped, UsageError, error_line
    from reid_dhm.runs.folders import keep_earlier_run
    from reid_dhm.runs.seeds import train_seeds

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    # Linear warm-up, then the peak lr, and x0.1 for the last epoch: a per-epoch cosine
    # over so few epochs would end at half the peak lr (noisy final weights).
    common = [
        f"data.root={args.root}",
        f"data.limit={args.limit}", "data.workers=0",  # 2 cores: loading in-line
        f"data.batch_size={args.batch_size}",
        f"train.max_epoch={args.epochs}", "train.eval_freq=0", "train.seed=1",
        f"optim.lr={args.lr}", f"scheduler.warmup_epochs={args.warmup}",
        "scheduler.name=multi_step", f"scheduler.milestones=[{args.epochs - 1}]",
        "scheduler.gamma=0.1",
    ]  # fmt: skip
    tmp = tempfile.TemporaryDirectory() if args.output_dir is None else None
    out = Path(args.output_dir or tmp.name)
    summary = {}
    for method in args.methods:
        start = time.time()
        try:
            cfg = resolve_config("fashion-mnist", None, [*METHODS[method], *common])
            cfg["output_dir"] = str(out / method)
            keep_earlier_run(out / method, None, False)  # as reid-dhm train does
            seeds = train_seeds(cfg, args.seeds)  # also writes seeds.json
        except (ConfigError, UsageError, ValueError, FileNotFoundError, RunStopped) as err:
            print(f"{method}: error: {error_line(err)}", file=sys.stderr)
            return getattr(err, "code", 2)
        summary[method] = {
            "top1_err": seeds["top1_err"],
            "top5_err": seeds["top5_err"],
            "runs": [r["top1_err"] for r in seeds["runs"]],
            "seconds": time.time() - start,
        }

    setting = (
        f"Fashion-MNIST, {args.limit} training images, full 10k test set, ResNet-20, "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD 0.9 lr {args.lr} wd 5e-4, "
        f"{args.warmup} linear warm-up epoch(s), x0.1 for the last epoch, {args.seeds} seed(s), "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    lines = [
        setting,
        "",
        "| method | top-1 error (%) | top-5 error (%) | per-seed top-1 | wall time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, s in summary.items():
        t1, t5 = s["top1_err"], s["top5_err"]
        runs = ", ".join(f"{v:.2f}" for v in s["runs"])
        lines.append(
            f"| {method} | {t1['mean']:.2f} +- {t1['std']:.2f} | {t5['mean']:.2f} +- "
            f"{t5['std']:.2f} | {runs} | {s['seconds'] / 60:.1f} min |"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": setting, **summary}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
