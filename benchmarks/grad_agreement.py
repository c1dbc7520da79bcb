#!/usr/bin/env python
"""Do the branches' cross-entropy gradients agree more after DHM training than after DSL?

The paper's argument (section 3.3, Eq. 11) is about the sub-objectives themselves:
mimicking should leave a network whose branches' classification losses pull the shared
stem in more consistent directions. The training-time monitor measures each branch's
whole loss (for DHM including the KL terms it is the student of), which mixes in the
mimicking pull itself. This script measures the CE terms alone, at trained weights: it
loads finished checkpoints, and over the same training batches (fixed order, seed 0)
computes with ``GradientMonitor`` and a CE-only criterion (``DHMLoss('dsl')``) the
cosine of every pair of branches' gradients on the stages they share.

    python benchmarks/grad_agreement.py runs/synthreid-quick/dsl-seed1 \\
        runs/synthreid-quick/dhm-seed1
    python benchmarks/grad_agreement.py RUN [RUN ...] --batches 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def agreement(run: Path, batches: int, root: str | None) -> dict:
    from reid_dhm import DHMLoss
    from reid_dhm.data.reid_manager import build_reid_datamanager
    from reid_dhm.engines.grad_monitor import GradientMonitor
    from reid_dhm.models.checkpoint import model_from_checkpoint
    from reid_dhm.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoint.pth")
    cfg = ckpt["config"]
    data = cfg["data"]
    manager = build_reid_datamanager(
        data["dataset"], root or data["root"], data["height"], data["width"],
        batch_size=data["batch_size"], workers=0,
    )  # fmt: skip
    model = model_from_checkpoint(ckpt).train()
    monitor = GradientMonitor(model, DHMLoss("dsl", label_smooth=cfg["loss"]["label_smooth"]), 1)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        manager.train_loader.dataset, batch_size=data["batch_size"], shuffle=True,
        generator=torch.Generator().manual_seed(0), drop_last=True,
    )  # fmt: skip
    for i, batch in enumerate(loader):
        if i == batches:
            break
        monitor.measure(batch["img"], batch["pid"])
    means = monitor.epoch_means()
    return {k: v for k, v in means.items() if k.startswith("grad/cos/") and k.count("/") == 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders holding checkpoint.pth")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--root", help="data root (default: the run's own)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    table = {}
    for run in map(Path, args.runs):
        table[str(run)] = agreement(run, args.batches, args.root)
        cells = ", ".join(f"{k[9:]} {v:.3f}" for k, v in sorted(table[str(run)].items()))
        print(f"{run}: CE-only gradient cosine on the shared stem: {cells}", flush=True)
    groups: dict[str, list[dict]] = {}
    for run, row in table.items():
        groups.setdefault(Path(run).name.rsplit("-seed", 1)[0], []).append(row)
    for name, rows in groups.items():
        keys = sorted({k for r in rows for k in r})
        cells = []
        for k in keys:
            vals = [r[k] for r in rows if k in r]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{k[9:]} {statistics.fmean(vals):.3f} +- {sd:.3f}")
        print(f"{name} ({len(rows)} runs): " + ", ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
