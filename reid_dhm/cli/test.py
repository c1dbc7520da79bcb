"""Evaluate a trained re-ID model on a data set's query/gallery split.

    python tools/test.py --checkpoint log/.../checkpoint.pth --dataset market1501 --root reid-data
    python tools/test.py --checkpoint CKPT --dataset synthreid --per-branch --rerank

Prints mAP, mINP and Rank-k for the main branch (every branch with --per-branch),
ranked by reid_dhm.evaluate (exact Market-1501 protocol).
"""

from __future__ import annotations

import argparse

from ..data.reid_manager import REID_DATASETS
from ..retrieval.validate import METRICS
from ..utils.options import RANKS
from .common import DEVICE_HELP, checkpoint_argument, doc_parser, run_guarded


# The docstring is the --help text; the work is reid_dhm.runs.evaluate.evaluate_checkpoint.
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = doc_parser(__doc__, prog)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a reid_dhm checkpoint (checkpoint.pth), or a run folder (its newest valid one)",
    )
    p.add_argument("--dataset", required=True, choices=REID_DATASETS,
                   help="the data set whose query/gallery split is ranked")  # fmt: skip
    p.add_argument(
        "--root",
        default="reid-data",
        help="data root; with --dataset folder, the Market-layout folder itself",
    )
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--per-branch", action="store_true", help="evaluate every branch")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="ranking distance (default: the checkpoint's own test.metric, the one "
                   "its training evaluated with)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2,
                   help="image-loading worker processes; 0 loads in this process")  # fmt: skip
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP}; the ranking runs there too")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable / truncated images out (with a warning) instead of failing",
    )
    p.add_argument("--ranks", type=int, nargs="+", default=list(RANKS),
                   help="Rank-k values to print (each >= 1)")  # fmt: skip
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument(
        "--report",
        dest="report_dir",
        metavar="DIR",
        help="write a self-contained HTML report (metrics, CMC, hardest queries with their "
        "top-k, camera pairs, config) into DIR; open DIR/index.html",
    )
    p.add_argument(
        "--single-file",
        dest="report_single_file",
        action="store_true",
        default=False,
        help="with --report: write the report as one HTML file with the thumbnails embedded "
        "(DIR.html, or DIR itself when it ends in .html) instead of a folder",
    )
    return p


def _evaluate(args) -> None:
    """``evaluate_checkpoint`` (the parser's destinations are its parameters)."""
    from ..runs.evaluate import evaluate_checkpoint

    args.checkpoint = checkpoint_argument(args.checkpoint)
    evaluate_checkpoint(**vars(args))


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_guarded(_evaluate, args)
