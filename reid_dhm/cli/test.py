"""Evaluate a trained re-ID model on a data set's query/gallery split.

    python tools/test.py --checkpoint log/.../checkpoint.pth --dataset market1501 --root reid-data
    python tools/test.py --checkpoint CKPT --dataset synthreid --per-branch --rerank

Prints mAP, mINP and Rank-k for the main branch (every branch with --per-branch),
ranked by reid_dhm.evaluate (exact Market-1501 protocol). The work is
``reid_dhm.runs.evaluate.evaluate_checkpoint``; this module only parses arguments.
"""

from __future__ import annotations

import argparse

from ..data.reid_manager import REID_DATASETS
from ..retrieval.validate import METRICS
from ..utils.options import RANKS
from .common import checkpoint_argument, run_guarded


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a reid_dhm checkpoint (checkpoint.pth), or a run folder (its newest valid one)",
    )
    p.add_argument("--dataset", required=True, choices=REID_DATASETS)
    p.add_argument("--root", default="reid-data", help="data root (folder: the folder itself)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--per-branch", action="store_true", help="evaluate every branch")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="distance (default: the one the model was trained with)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="for the network and the ranking")
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
