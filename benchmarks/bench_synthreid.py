#!/usr/bin/env python
"""Baseline vs DSL vs DHM on synthreid at the same training budget, plus a hand-crafted floor.

Every method trains with the quickstart recipe (``reid-dhm train --dataset synthreid``:
MobileNetV2 from scratch at 128x64, same epochs, optimizer and schedule), run in this
process through ``reid_dhm.runs.train``; baseline uses the plain ``mobilenetv2``, DSL
and DHM ``dhm_mobilenetv2``.
A colour-histogram nearest-neighbour baseline shows what colour statistics alone
achieve on the same query/gallery split.

    python benchmarks/bench_synthreid.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

METHODS = {
    "baseline": ["model.name=mobilenetv2", "loss.mode=baseline"],
    "dsl": ["model.name=dhm_mobilenetv2", "loss.mode=dsl"],
    "dhm": ["model.name=dhm_mobilenetv2", "loss.mode=dhm"],
}


def colour_histogram_floor(root: Path) -> dict:
    from reid_dhm.data.reid_datasets import scan_split
    from reid_dhm.retrieval import evaluate
    from reid_dhm.retrieval.colour_histogram import colour_histogram_features

    folder = root / "synthreid"
    q = scan_split(folder / "query", relabel=False)
    g = scan_split(folder / "bounding_box_test", relabel=False)
    qf = colour_histogram_features([x[0] for x in q])
    gf = colour_histogram_features([x[0] for x in g])
    res = evaluate(
        qf, gf, [x[1] for x in q], [x[1] for x in g], [x[2] for x in q], [x[2] for x in g]
    )
    return {"mAP": res["mAP"], "rank1": float(res["cmc"][0]), "mINP": res["mINP"]}


def train_quietly(overrides: list[str], run_dir: Path) -> dict:
    """One quickstart run in this process (its console output discarded); results.json."""
    from reid_dhm.config import resolve_config
    from reid_dhm.runs import train
    from reid_dhm.runs.folders import keep_earlier_run

    cfg = resolve_config("synthreid", None, overrides)
    cfg["output_dir"] = str(run_dir)
    keep_earlier_run(run_dir, None, False)  # as reid-dhm train: an earlier run is kept aside
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return train(cfg).results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--root", default="reid-data", help="where synthreid is (or gets) written")
    p.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every run")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-synthreid-"))
    table: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method, extra in METHODS.items():
            run_dir = out / f"{method}-seed{seed}"
            overrides = [f"train.seed={seed}", *extra, *args.overrides, f"data.root={args.root}"]
            print(f"$ train synthreid -> {run_dir}:", " ".join(overrides), flush=True)
            res = train_quietly(overrides, run_dir)["synthreid"]["main"]
            table[method].append(res)
            print(
                f"  {method} seed {seed}: mAP {100 * res['mAP']:.1f}  R1 {100 * res['rank1']:.1f}"
            )
    floor = colour_histogram_floor(Path(args.root))
    print(f"\nsynthreid, main branch, seeds {args.seeds} (mean +- std over seeds)")
    print(f"{'method':<18}{'mAP':>14}{'Rank-1':>14}{'mINP':>14}")

    def cell(rows, key):
        vals = [100 * r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{np.mean(vals):6.1f} +- {sd:4.1f}"

    for method, rows in table.items():
        print(
            f"{method:<18}{cell(rows, 'mAP'):>14}{cell(rows, 'rank1'):>14}{cell(rows, 'mINP'):>14}"
        )
    print(
        f"{'colour histogram':<18}{100 * floor['mAP']:>14.1f}{100 * floor['rank1']:>14.1f}"
        f"{100 * floor['mINP']:>14.1f}"
    )
    print(f"runs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
