"""Rank a gallery for query images with a trained model; write CSV, JSON and a PNG.

    python tools/retrieve.py --checkpoint CKPT --query person.jpg --gallery gallery_dir/
    python tools/retrieve.py --checkpoint CKPT --query queries/ --gallery gallery_dir/ \\
        --save-index gallery.index                       # embed the gallery once ...
    python tools/retrieve.py --checkpoint CKPT --query queries/ --gallery gallery.index
                                                         # ... and reuse it
    python tools/retrieve.py --checkpoint CKPT --query queries/ --gallery gallery_dir/ --rerank

A gallery folder is embedded with the checkpoint's model and indexed with faiss
(exact by default; --kind ivf / hnsw / ivfpq for approximate search on big galleries).
Files named like Market-1501 (<pid>_c<camera>...) keep their identity and camera,
so the PNG marks correct matches green and wrong ones red. --rerank re-ranks with
k-reciprocal neighbours (needs the gallery features: a folder or a saved flat / hnsw index).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from ..retrieval import KINDS
from .common import run_guarded

# The tool's PNG shows at most this many queries (one row each).
PNG_QUERIES = 16


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--query", required=True, help="an image file or a folder of images")
    p.add_argument("--gallery", required=True, help="a folder of images or a saved index")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="faiss index built for a gallery folder (default flat)")  # fmt: skip
    p.add_argument("--save-index", help="write the index of a gallery folder here for reuse")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of every query against the "
        "whole gallery; needs the gallery features (a folder, or a saved flat / hnsw "
        "index); time quadratic in queries + gallery",
    )
    p.add_argument("--output-dir", default="retrieval", help="where results.csv/json/png go")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    return p


def parse_identity(path: str) -> tuple[int, int]:
    """(pid, camera) from a Market-style name, or (-1, -1)."""
    from ..data.reid_datasets import NAME_PATTERN

    match = NAME_PATTERN.match(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def check_args(args) -> None:
    """Option combinations that cannot work, before anything is embedded."""
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    if Path(args.gallery).is_file():
        for flag, value in (("--save-index", args.save_index), ("--kind", args.kind)):
            if value is not None:
                raise ValueError(
                    f"{flag} applies to a gallery folder; --gallery {args.gallery} is already "
                    "a saved index"
                )


def load_or_build_gallery(args, extractor):
    """(GalleryIndex, gallery features or None) for --gallery (a saved index or a folder).

    The features are returned only when --rerank needs them: a folder's embeddings, or
    the vectors a saved flat / hnsw index keeps.
    """
    from ..inference import list_images
    from ..retrieval import GalleryIndex

    source = Path(args.gallery)
    if source.is_file():
        index = GalleryIndex.load(source, dim=extractor.feature_dim, metric=args.metric)
        print(f"gallery: {len(index)} entries from {source}")
        feats = None
        if args.rerank:
            try:
                feats = index.vectors()
            except ValueError:
                raise ValueError(
                    f"--rerank needs the gallery features, and {source} is a saved "
                    f"{index.kind!r} index, which does not keep them: give the gallery "
                    "folder, or an index saved with --kind flat or hnsw"
                ) from None
        return index, feats
    paths = list_images(source)
    feats = extractor(paths)
    ids = [parse_identity(p) for p in paths]
    index = GalleryIndex.build(
        feats,
        pids=[i[0] for i in ids],
        camids=[i[1] for i in ids],
        paths=paths,
        metric=args.metric,
        kind=args.kind or "flat",
    )
    print(f"gallery: embedded {len(paths)} images from {source}")
    if args.save_index:
        index.save(args.save_index)
        print(f"gallery index saved to {args.save_index}")
    if not args.rerank:
        return index, None
    try:
        # What the index holds (normalised for cosine), so that re-ranking a folder and
        # re-ranking its saved index see the same numbers.
        return index, index.vectors()
    except ValueError:  # ivf / ivfpq keep no exact vectors: the embeddings themselves
        return index, feats


def rerank(index, qf, gf, k: int):
    """``SearchResult`` of each query's k nearest gallery entries after re-ranking."""
    from ..retrieval import KReciprocalReranker

    reranker = KReciprocalReranker(qf, gf, index.metric)
    dist, idx = reranker.topk(k)
    return index.gather(idx.cpu().numpy(), dist.cpu().numpy())


def png_rows(result, queries) -> tuple[int, int, str | None]:
    """(queries, columns) the PNG can show, and why it shows less (or nothing).

    Every tile needs an image file: an index saved without paths has none, and an
    approximate index can return fewer than k hits for some queries.
    """
    shown = min(len(queries), PNG_QUERIES)
    k = result.indices.shape[1]
    if result.paths is None:
        return shown, 0, "the gallery index holds no image paths"
    hits = result.indices[:shown] >= 0
    cols = k if hits.all() else int(np.argmin(hits.all(0)))
    if cols == 0:
        return shown, 0, "a query has no hit at all"
    tiles = result.paths[:shown, :cols].ravel()
    if not all(tiles):
        return shown, 0, "some gallery entries have no image path"
    missing = next((p for p in tiles if not Path(p).is_file()), None)
    if missing is not None:
        return shown, 0, f"gallery image {missing} not found"
    if cols < k:
        return shown, cols, f"it shows the top {cols}: some queries have fewer than {k} hits"
    return shown, cols, None


def retrieve(args) -> dict:
    from ..engines.plots import plot_ranked_results
    from ..inference import FeatureExtractor, list_images
    from ..utils.io import atomic_write_text

    check_args(args)
    extractor = FeatureExtractor.from_checkpoint(
        args.checkpoint, batch_size=args.batch_size, device=args.device
    )
    queries = list_images(args.query)  # a bad query path fails before the gallery is embedded
    index, gallery_feats = load_or_build_gallery(args, extractor)
    qf = extractor(queries)
    k = min(args.topk, len(index))
    result = rerank(index, qf, gallery_feats, k) if args.rerank else index.search(qf, k)
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
    written = ["results.csv", "results.json"]

    shown, cols, note = png_rows(result, queries)
    if cols:
        q_ids = np.array([parse_identity(q)[0] for q in queries[:shown]])
        matches = None
        if (q_ids >= 0).all() and result.pids is not None:
            matches = result.pids[:shown, :cols] == q_ids[:, None]
        plot_ranked_results(
            queries[:shown], list(result.paths[:shown, :cols].ravel()),
            np.arange(shown * cols).reshape(shown, cols), matches, out / "results.png",
            distances=result.distances[:shown, :cols],
        )  # fmt: skip
        written.append("results.png")
    if note:
        print(f"PNG: {note}" if cols else f"no PNG: {note}")
    if args.rerank:
        print("distances are k-reciprocal re-ranked distances (k1=20, k2=6, lambda=0.3)")
    print(f"{len(queries)} queries ranked; wrote {', '.join(written)} in {out}")
    return ranked


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_guarded(retrieve, args)
