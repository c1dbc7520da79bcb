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
The distance is --metric when given, else a saved index's own, else the checkpoint's
test.metric (the one `reid-dhm test` ranks by); the output says which.
"""

from __future__ import annotations

import argparse

from ..retrieval import KINDS, METRICS
from .common import DEVICE_HELP, checkpoint_argument, doc_parser, run_guarded


# The docstring is the --help text; the work is reid_dhm.runs.retrieve.retrieve_folder.
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = doc_parser(__doc__, prog)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a reid_dhm checkpoint, or a run folder (its newest valid one); its deployed "
        "model embeds the images",
    )
    p.add_argument("--query", required=True, help="an image file or a folder of images")
    p.add_argument("--gallery", required=True, help="a folder of images or a saved index")
    p.add_argument("--topk", type=int, default=10, help="hits per query (>= 1)")
    p.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help="ranking distance (default: a saved --gallery index's own, else the "
        "checkpoint's test.metric)",
    )
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="faiss index built for a gallery folder: flat is exact; ivf, hnsw, "
                   "ivfpq are approximate, for big galleries (default: flat)")  # fmt: skip
    p.add_argument("--save-index", help="write the index of a gallery folder here for reuse")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of every query against the "
        "whole gallery; needs the gallery features (a folder, or a saved flat / hnsw "
        "index); time quadratic in queries + gallery",
    )
    p.add_argument("--output-dir", default="retrieval", help="where results.csv/json/png go")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def retrieve(args) -> dict:
    """``retrieve_folder`` (the parser's destinations are its parameters); the ranked hits."""
    from ..runs.retrieve import retrieve_folder

    args.checkpoint = checkpoint_argument(args.checkpoint)
    return retrieve_folder(**vars(args)).ranked


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_guarded(retrieve, args)
