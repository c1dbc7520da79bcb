"""Evaluate a trained re-ID model on a data set's query/gallery split.

    python tools/test.py --checkpoint log/.../checkpoint.pth --dataset market1501 --root reid-data
    python tools/test.py --checkpoint CKPT --dataset synthreid --per-branch --rerank

Prints mAP, mINP and Rank-k for the main branch (every branch with --per-branch),
ranked by reid_dhm.evaluate (exact Market-1501 protocol).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..data.reid_manager import REID_DATASETS
from .common import run_guarded


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a reid_dhm checkpoint (checkpoint.pth)")
    p.add_argument("--dataset", required=True, choices=REID_DATASETS)
    p.add_argument("--root", default="reid-data", help="data root (folder: the folder itself)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--per-branch", action="store_true", help="evaluate every branch")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default=None,
                   help="distance (default: the one the model was trained with)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="for the network and the ranking")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable / truncated images out (with a warning) instead of failing",
    )
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 5, 10, 20],
                   help="Rank-k values to print (each >= 1)")  # fmt: skip
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write a self-contained HTML report (metrics, CMC, hardest queries with their "
        "top-k, camera pairs, config) into DIR; open DIR/index.html",
    )
    return p


def evaluate_checkpoint(args) -> dict:
    from ..data.reid_manager import build_reid_datamanager
    from ..engines.reid_engine import format_results
    from ..inference import extract_loader_features
    from ..retrieval import check_ranks, cmc_at, evaluate
    from ..utils.checkpoint import load_checkpoint, model_from_checkpoint
    from ..utils.device import resolve_device
    from ..utils.io import atomic_write_text

    ranks = check_ranks(args.ranks)  # before the checkpoint is loaded and anything embedded
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.get("config") or {}
    data = cfg.get("data", {})
    test_cfg = cfg.get("test", {})
    metric = args.metric or ("cosine" if test_cfg.get("normalize_feature") else None)
    metric = metric or test_cfg.get("metric", "euclidean")
    device = resolve_device(args.device)
    model = model_from_checkpoint(ckpt).to(device).eval()
    manager = build_reid_datamanager(
        args.dataset,
        args.root,
        height=data.get("height", 256),
        width=data.get("width", 128),
        norm_mean=data.get("norm_mean", (0.485, 0.456, 0.406)),
        norm_std=data.get("norm_std", (0.229, 0.224, 0.225)),
        batch_size=1,
        test_batch_size=args.batch_size,
        workers=args.workers,
        pin_memory=device.type == "cuda",
        skip_bad_images=args.skip_bad_images,
    )
    branches = model.branch_names if args.per_branch else ("main",)
    show = "features" if sys.stderr.isatty() else None
    all_results = {}
    for name, loaders in manager.test_loader.items():
        start = time.time()
        qf, q_pids, q_camids, q_paths = extract_loader_features(
            model, loaders["query"], branches, show
        )
        gf, g_pids, g_camids, g_paths = extract_loader_features(
            model, loaders["gallery"], branches, show
        )
        extracted = time.time()
        table, raw = {}, {}
        for branch in branches:
            res = raw[branch] = evaluate(
                qf[branch], gf[branch], q_pids, g_pids, q_camids, g_camids,
                metric=metric, max_rank=max(50, *ranks), rerank=args.rerank, device=device,
            )  # fmt: skip
            table[branch] = {
                "mAP": res["mAP"],
                "mINP": res["mINP"],
                **{f"rank{r}": v for r, v in cmc_at(res, ranks).items()},
                "num_valid_queries": res["num_valid_queries"],
            }
        print(format_results(name, table, ranks, metric, args.rerank))
        if max(ranks) > len(g_pids):
            print(
                f"note: the gallery has {len(g_pids)} images, so Rank-k for k > "
                f"{len(g_pids)} equals Rank-{len(g_pids)}"
            )
        print(
            f"{len(q_pids)} queries x {len(g_pids)} gallery images: features "
            f"{extracted - start:.1f} s, ranking {time.time() - extracted:.2f} s"
        )
        all_results[name] = table
        if args.report:
            from ..report import write_report

            folder = (
                Path(args.report) if len(manager.test_loader) == 1 else Path(args.report) / name
            )
            page = write_report(
                folder, raw, qf["main"], gf["main"], q_pids, g_pids, q_camids, g_camids,
                q_paths, g_paths, metric=metric, rerank=args.rerank, ranks=ranks,
                title=f"{ckpt.get('model_name', 'model')} on {name}",
                info={
                    "dataset": f"{name} ({args.root})",
                    "checkpoint": str(args.checkpoint),
                    "epochs trained": ckpt.get("epoch"),
                },
                config=cfg or None,
            )  # fmt: skip
            print(f"report: {page}")
    if args.output:
        atomic_write_text(args.output, json.dumps(all_results, indent=1))
    return all_results


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_guarded(evaluate_checkpoint, args)
