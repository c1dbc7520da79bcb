"""Per-branch parameters and FLOPs of a model: training cost vs deployed cost.

python tools/summary.py --model dhm_resnet50 --input 256x128

Branch, training-total and deployed rows count embedding networks (stages and
pooling); the classifiers, used in training only and sized by the class count, are
a row of their own and left out of the train/deploy ratio.
"""

from __future__ import annotations

import argparse

from ..models import BRANCH_STYLES, build_model, list_models
from ..models.complexity import branch_costs
from .common import UsageError, run_guarded

WIDTH = 46


def parse_size(text: str) -> tuple[int, int]:
    """``'256x128'`` -> ``(256, 128)``; a ``UsageError`` for anything else or below 32x32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input must look like 256x128, got {text!r}") from None
    if h < 32 or w < 32:
        raise UsageError(f"--input must be at least 32x32, got {text!r}")
    return h, w


def format_table(name: str, size: tuple[int, int], rows: dict, num_classes: int) -> str:
    """The cost table printed by this tool, from :func:`branch_costs` rows."""
    heads = len(rows) - 3  # every row but classifiers/train/deploy is a branch with a classifier
    rule = "-" * WIDTH

    def line(label: str, cost: dict) -> str:
        return f"{label:<24}{cost['params'] / 1e6:>12.2f}{cost['flops'] / 1e9:>10.3f}"

    lines = [
        f"{name} @ {size[0]}x{size[1]}, {num_classes} classes "
        "(forward, one image; FLOPs = 2 x multiply-adds)",
        "rows count embedding networks (stages + pooling); classifiers are listed apart",
        f"{'branch':<24}{'params (M)':>12}{'GFLOPs':>10}",
        rule,
    ]
    for row, cost in rows.items():
        if row not in ("classifiers", "train", "deploy"):
            lines.append(line(row, cost))
    lines += [
        rule,
        line("training total", rows["train"]),
        line("deployed", rows["deploy"]),
        rule,
        line(f"{heads} classifier{'s' if heads > 1 else ''} (training)", rows["classifiers"]),
    ]
    train, deploy = rows["train"], rows["deploy"]
    lines.append(
        f"train/deploy ratio (classifiers excluded): "
        f"params {train['params'] / deploy['params']:.2f}x, "
        f"FLOPs {train['flops'] / deploy['flops']:.2f}x"
    )
    return "\n".join(lines)


def summarize(args) -> None:
    """Build the model named by ``args`` and print its cost table (one per branch style)."""
    size = parse_size(args.input)
    kwargs = {} if args.branches is None else {"branches": args.branches}
    styles = BRANCH_STYLES if args.branch_style == "both" else (args.branch_style,)
    tables = []
    for style in styles:
        # Only a non-default style is passed: models without the option still work.
        extra = {} if style == "paper" else {"branch_style": style}
        model = build_model(args.model, args.num_classes, **kwargs, **extra)
        name = (
            f"{args.model} (branch style {style})" if args.branch_style != "paper" else args.model
        )
        tables.append(format_table(name, size, branch_costs(model, size), model.num_classes))
    print("\n\n".join(tables))


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dhm_resnet50", help=f"one of {list_models()}")
    parser.add_argument("--input", default="256x128", help="HxW, e.g. 256x128")
    parser.add_argument("--num-classes", type=int, default=751, help="classifier size (751)")
    parser.add_argument("--branches", default=None, help="aux branches, e.g. aux1,aux2")
    parser.add_argument(
        "--branch-style",
        default="paper",
        choices=(*BRANCH_STYLES, "both"),
        help="aux branch recipes: the paper's, mirror copies of the main path, or both tables",
    )
    return run_guarded(summarize, parser.parse_args(argv))
