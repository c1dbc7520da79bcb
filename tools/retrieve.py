#!/usr/bin/env python
"""Rank a gallery for query images with a trained model; write CSV, JSON and a PNG.

    python tools/retrieve.py --checkpoint CKPT --query person.jpg --gallery gallery_dir/
    python tools/retrieve.py --checkpoint CKPT --query queries/ --gallery gallery_dir/ \\
        --save-index gallery.index                       # embed the gallery once ...
    python tools/retrieve.py --checkpoint CKPT --query queries/ --gallery gallery.index
                                                         # ... and reuse it

A gallery folder is embedded with the checkpoint's model and indexed with faiss
(exact by default; --kind ivf / hnsw / ivfpq for approximate search on big galleries).
Files named like Market-1501 (<pid>_c<camera>...) keep their identity and camera,
so the PNG marks correct matches green and wrong ones red.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from common import run_guarded

KINDS = ("flat", "ivf", "hnsw", "ivfpq")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--query", required=True, help="an image file or a folder of images")
    p.add_argument("--gallery", required=True, help="a folder of images or a saved index")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    p.add_argument("--kind", choices=KINDS, default="flat", help="faiss index for a folder")
    p.add_argument("--save-index", help="write the gallery index here for reuse")
    p.add_argument("--output-dir", default="retrieval", help="where results.csv/json/png go")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    return p


def parse_identity(path: str) -> tuple[int, int]:
    """(pid, camera) from a Market-style name, or (-1, -1)."""
    from reid_dhm.data.reid_datasets import NAME_PATTERN

    match = NAME_PATTERN.match(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def load_or_build_gallery(args, extractor):
    from reid_dhm.inference import list_images
    from reid_dhm.retrieval import GalleryIndex

    source = Path(args.gallery)
    if source.is_file():
        index = GalleryIndex.load(source, dim=extractor.feature_dim, metric=args.metric)
        print(f"gallery: {len(index)} entries from {source}")
        return index
    paths = list_images(source)
    feats = extractor(paths)
    ids = [parse_identity(p) for p in paths]
    index = GalleryIndex.build(
        feats,
        pids=[i[0] for i in ids],
        camids=[i[1] for i in ids],
        paths=paths,
        metric=args.metric,
        kind=args.kind,
    )
    print(f"gallery: embedded {len(paths)} images from {source}")
    if args.save_index:
        index.save(args.save_index)
        print(f"gallery index saved to {args.save_index}")
    return index


def retrieve(args) -> dict:
    import numpy as np

    from reid_dhm.engines.plots import plot_ranked_results
    from reid_dhm.inference import FeatureExtractor, list_images
    from reid_dhm.utils.io import atomic_write_text

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    extractor = FeatureExtractor.from_checkpoint(
        args.checkpoint, batch_size=args.batch_size, device=args.device
    )
    queries = list_images(args.query)  # a bad query path fails before the gallery is embedded
    index = load_or_build_gallery(args, extractor)
    result = index.search(extractor(queries), min(args.topk, len(index)))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows, ranked = [], {}
    for qi, query in enumerate(queries):
        hits = []
        for r in range(result.indices.shape[1]):
            if result.indices[qi, r] < 0:
                break
            hit = {
                "rank": r + 1,
                "gallery": str(result.paths[qi, r]) if result.paths is not None else "",
                "distance": float(result.distances[qi, r]),
                "pid": int(result.pids[qi, r]) if result.pids is not None else -1,
                "camid": int(result.camids[qi, r]) if result.camids is not None else -1,
            }
            hits.append(hit)
            rows.append({"query": query, **hit})
        ranked[query] = hits
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["query", "rank", "gallery", "distance", "pid", "camid"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.json", json.dumps(ranked, indent=1))

    if result.paths is not None and all(p for p in result.paths.ravel()):
        shown = min(len(queries), 16)
        gallery_paths = list(result.paths[:shown].ravel())
        k = result.indices.shape[1]
        grid = np.arange(shown * k).reshape(shown, k)
        q_ids = np.array([parse_identity(q)[0] for q in queries[:shown]])
        matches = None
        if (q_ids >= 0).all() and result.pids is not None:
            matches = result.pids[:shown] == q_ids[:, None]
        plot_ranked_results(
            queries[:shown], gallery_paths, grid, matches, out / "results.png",
            distances=result.distances[:shown],
        )  # fmt: skip
    print(f"{len(queries)} queries ranked; results in {out}/results.csv, .json, .png")
    return ranked


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(retrieve, args)


if __name__ == "__main__":
    sys.exit(main())
