"""Per-branch parameters and FLOPs of a model: training cost vs deployed cost.

    python tools/summary.py --model dhm_resnet50 --input 256x128
    python tools/summary.py --checkpoint log/synthreid/dhm_mobilenetv2-dhm   # a run's own model

Each branch row counts the layers that compute that branch's embedding (stages and
pooling). The classifiers, used only in training and sized by the class count, are
counted on a row of their own and left out of the train/deploy ratio.
"""

from __future__ import annotations

import argparse

from ..models import BRANCH_STYLES, list_models
from .common import UsageError, checkpoint_argument, doc_parser, run_guarded

# What --model / --input / --num-classes / --branch-style mean when not given (and no
# --checkpoint): the paper's ResNet-50 at Market-1501's size and training identities.
MODEL, INPUT, NUM_CLASSES, BRANCH_STYLE = "dhm_resnet50", "256x128", 751, "paper"
# The options a --checkpoint fixes itself (its model is rebuilt as it was trained).
FIXED_BY_CHECKPOINT = ("model", "num_classes", "branches", "branch_style")


def parse_size(text: str) -> tuple[int, int]:
    """``'256x128'`` -> ``(256, 128)``; a ``UsageError`` for anything else or below 32x32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input must look like 256x128, got {text!r}") from None
    if h < 32 or w < 32:
        raise UsageError(f"--input must be at least 32x32, got {text!r}")
    return h, w


def checkpoint_costs(path: str, input_size: tuple[int, int] | None) -> tuple:
    """``(title, size, rows, class count)`` of the model stored in the checkpoint ``path``,
    at ``input_size`` (None: the size it was trained at)."""
    from ..data.preprocessing import Preprocessing
    from ..models.checkpoint import model_from_checkpoint
    from ..models.complexity import branch_costs
    from ..utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    if input_size is None:
        pre = Preprocessing.from_checkpoint(ckpt)
        input_size = (pre.height, pre.width)
    title = f"{ckpt.get('model_name', type(model).__name__)} from {path}"
    return title, input_size, branch_costs(model, input_size), model.num_classes


def summarize(args) -> None:
    """Print the cost table of the model named by ``args`` (one per branch style), or of
    ``args.checkpoint``'s model."""
    from ..models.complexity import style_costs
    from ..viz.tables import format_costs

    size = parse_size(args.input) if args.input is not None else None
    if args.checkpoint is not None:
        given = [k for k in FIXED_BY_CHECKPOINT if getattr(args, k) is not None]
        if given:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise UsageError(f"--checkpoint sets the model as it was trained; drop {flags}")
        title, size, rows, n = checkpoint_costs(checkpoint_argument(args.checkpoint), size)
        print(format_costs(title, size, rows, n))
        return
    size = size or parse_size(INPUT)
    costs = style_costs(
        args.model or MODEL,
        NUM_CLASSES if args.num_classes is None else args.num_classes,
        size,
        args.branches,
        args.branch_style or BRANCH_STYLE,
    )
    print("\n\n".join(format_costs(title, size, rows, n) for title, rows, n in costs))


# The docstring is the --help text. Defaults are None so that options a --checkpoint
# fixes can be told apart from ones given; each help names the value that applies.
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = doc_parser(__doc__, prog)
    p.add_argument(
        "--checkpoint",
        help="a reid_dhm checkpoint or run folder: the model, input size and class count it "
        "was trained with",
    )
    p.add_argument("--model", help=f"one of {list_models()} (default: {MODEL})")
    p.add_argument(
        "--input", help=f"HxW, e.g. 256x128 (default: {INPUT}, or the checkpoint's size)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        help=f"classifier size, the training set's identities (default: {NUM_CLASSES}, "
        "Market-1501's)",
    )
    p.add_argument("--branches", help="aux branches, e.g. aux1,aux2 (default: the model's own)")
    p.add_argument(
        "--branch-style",
        choices=(*BRANCH_STYLES, "both"),
        help="aux branch recipes: the paper's, mirror copies of the main path, or both tables "
        f"(default: {BRANCH_STYLE})",
    )
    return p


def main(argv=None, prog: str | None = None) -> int:
    return run_guarded(summarize, build_parser(prog).parse_args(argv))
