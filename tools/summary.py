#!/usr/bin/env python
"""Per-branch parameters and FLOPs of a model: training cost vs deployed cost.

python tools/summary.py --model dhm_resnet50 --input 256x128
"""

from __future__ import annotations

import argparse
import sys

from reid_dhm.models import build_model, list_models
from reid_dhm.models.complexity import branch_costs


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like 256x128, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"--input must be at least 32x32, got {text!r}")
    return h, w


def format_table(name: str, size: tuple[int, int], rows: dict) -> str:
    lines = [
        f"{name} @ {size[0]}x{size[1]} (forward, one image; FLOPs = 2 x multiply-adds)",
        f"{'branch':<16}{'params (M)':>12}{'GFLOPs':>10}",
        "-" * 38,
    ]
    for row, cost in rows.items():
        if row == "train":
            lines.append("-" * 38)
        label = {"train": "training total", "deploy": "deployed"}.get(row, row)
        lines.append(f"{label:<16}{cost['params'] / 1e6:>12.2f}{cost['flops'] / 1e9:>10.3f}")
    train, deploy = rows["train"], rows["deploy"]
    lines.append(
        f"train/deploy ratio: params {train['params'] / deploy['params']:.2f}x, "
        f"FLOPs {train['flops'] / deploy['flops']:.2f}x"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dhm_resnet50", help=f"one of {list_models()}")
    parser.add_argument("--input", type=parse_size, default=(256, 128), help="HxW, e.g. 256x128")
    parser.add_argument("--num-classes", type=int, default=751, help="classifier size (751)")
    parser.add_argument("--branches", default=None, help="aux branches, e.g. aux1,aux2")
    args = parser.parse_args(argv)
    kwargs = {} if args.branches is None else {"branches": args.branches}
    try:
        model = build_model(args.model, args.num_classes, **kwargs)
    except ValueError as err:
        parser.error(str(err))
    print(format_table(args.model, args.input, branch_costs(model, args.input)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
