"""Per-branch parameters and FLOPs of a model: training cost vs deployed cost.

python tools/summary.py --model dhm_resnet50 --input 256x128

Branch, training-total and deployed rows count embedding networks (stages and
pooling); the classifiers, used in training only and sized by the class count, are
a row of their own and left out of the train/deploy ratio.
"""

from __future__ import annotations

import argparse

from ..models import BRANCH_STYLES, list_models
from .common import UsageError, run_guarded


def parse_size(text: str) -> tuple[int, int]:
    """``'256x128'`` -> ``(256, 128)``; a ``UsageError`` for anything else or below 32x32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input must look like 256x128, got {text!r}") from None
    if h < 32 or w < 32:
        raise UsageError(f"--input must be at least 32x32, got {text!r}")
    return h, w


def summarize(args) -> None:
    """Print the cost table of the model named by ``args`` (one per branch style)."""
    from ..models.complexity import style_costs
    from ..viz.tables import format_costs

    size = parse_size(args.input)
    costs = style_costs(args.model, args.num_classes, size, args.branches, args.branch_style)
    print("\n\n".join(format_costs(title, size, rows, n) for title, rows, n in costs))


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
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
    return parser


def main(argv=None, prog: str | None = None) -> int:
    return run_guarded(summarize, build_parser(prog).parse_args(argv))
