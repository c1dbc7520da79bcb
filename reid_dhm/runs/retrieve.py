"""``reid-dhm retrieve`` as a library call: rank a gallery for query images.

:func:`retrieve_folder` embeds the query images (and a gallery folder, or loads a
saved :class:`~reid_dhm.retrieval.GalleryIndex`) with a checkpoint's model, ranks
the gallery for every query (optionally k-reciprocal re-ranked) and writes
``results.csv``, ``results.json`` and, when every tile has an image file,
``results.png`` into an output folder. Files named like Market-1501
(``<pid>_c<camera>...``) keep their identity and camera, so the PNG marks correct
matches green and wrong ones red.

The distance is ``--metric`` when given, else a saved index's own, else the one the
checkpoint's training evaluated with (its ``test.metric``), so that ``retrieve`` ranks
as ``reid-dhm test`` does; the log says which applies.

Error messages name the ``reid-dhm retrieve`` options (``--topk``, ``--kind`` ...),
which are this function's keyword arguments of the same name.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The PNG shows at most this many queries (one row each).
PNG_QUERIES = 16
CSV_COLUMNS = ("query", "rank", "gallery", "distance", "pid", "camid")
RERANK_NOTE = "distances are k-reciprocal re-ranked distances (k1=20, k2=6, lambda=0.3)"
# What a distance of each metric is (GalleryIndex's: smaller is closer for both).
METRIC_MEANING = {"cosine": "1 - cosine similarity", "euclidean": "squared L2"}
# The console shows the first few queries' best hits; results.csv holds them all.
PREVIEW_QUERIES, PREVIEW_HITS = 3, 5


@dataclass
class Retrieval:
    """What :func:`retrieve_folder` ranked and wrote.

    Attributes:
        ranked: ``{query path: [{rank, gallery, distance, pid, camid}, ...]}``, best
            first (what ``results.json`` holds).
        search: the ``SearchResult`` behind it (Q x k arrays).
        output_dir: the folder written; files: the names written there.
        metric: the distance that ranked (``'cosine'`` / ``'euclidean'``).
    """

    ranked: dict[str, list[dict]]
    search: object
    output_dir: Path
    files: list[str] = field(default_factory=list)
    metric: str = "cosine"


def parse_identity(path: str | os.PathLike) -> tuple[int, int]:
    """(pid, camera) from a Market-style name, or (-1, -1) (also for ids beyond int64:
    they only mark matches here, and the index stores int64)."""
    from ..data.reid_datasets import INT64_MAX, NAME_PATTERN

    match = NAME_PATTERN.match(Path(path).name)
    ids = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    return ids if max(ids) <= INT64_MAX else (-1, -1)


def check_retrieve_args(topk: int, gallery, save_index=None, kind: str | None = None) -> None:
    """Option combinations that cannot work, before anything is embedded."""
    if topk < 1:
        raise ValueError(f"--topk must be >= 1, got {topk}")
    if Path(gallery).is_file():
        for flag, value in (("--save-index", save_index), ("--kind", kind)):
            if value is not None:
                raise ValueError(
                    f"{flag} applies to a gallery folder; --gallery {gallery} is already "
                    "a saved index"
                )


def pick_metric(metric: str | None, ckpt, index_metric: str | None = None) -> tuple[str, str]:
    """(the metric that ranks, why): ``metric`` (``--metric``) when given, else a saved
    index's own (``index_metric``), else the checkpoint's ``test.metric``."""
    from .evaluate import trained_metric

    if metric is not None:
        return metric, "--metric"
    if index_metric is not None:
        return index_metric, "the saved index's own metric"
    return (
        trained_metric(ckpt.get("config") or {}),
        "the checkpoint's test.metric, the one `reid-dhm test` ranks by; --metric changes it",
    )


def load_gallery_index(source: Path, extractor, metric: str | None, rerank: bool, log=print):
    """(GalleryIndex, its vectors when ``rerank`` needs them, else None) from a saved index.

    ``metric`` None takes the index's own; another than the index's is a ValueError (a
    saved index's distances are fixed).
    """
    from ..retrieval import GalleryIndex

    index = GalleryIndex.load(source, dim=extractor.feature_dim)
    if metric is not None and metric != index.metric:
        raise ValueError(
            f"--metric {metric}: the saved index {source} ranks by {index.metric} distance; "
            f"drop --metric, or give the gallery folder to index it by {metric}"
        )
    log(f"gallery: {len(index)} entries from {source}")
    if not rerank:
        return index, None
    try:
        return index, index.vectors()
    except ValueError:
        raise ValueError(
            f"--rerank needs the gallery features, and {source} is a saved "
            f"{index.kind!r} index, which does not keep them: give the gallery "
            "folder, or an index saved with --kind flat or hnsw"
        ) from None


def build_gallery_index(
    source: Path, extractor, metric: str, kind: str | None, save_index, rerank: bool, log=print
):
    """(GalleryIndex, features when ``rerank`` needs them, else None) of a gallery folder."""
    from ..inference import list_images
    from ..retrieval import GalleryIndex

    paths = list_images(source)
    feats = extractor(paths)
    ids = [parse_identity(p) for p in paths]
    index = GalleryIndex.build(
        feats,
        pids=[i[0] for i in ids],
        camids=[i[1] for i in ids],
        paths=paths,
        metric=metric,
        kind=kind or "flat",
    )
    log(f"gallery: embedded {len(paths)} images from {source}")
    if save_index:
        index.save(save_index)
        log(f"gallery index saved to {save_index}")
    if not rerank:
        return index, None
    try:
        # What the index holds (normalised for cosine), so that re-ranking a folder and
        # re-ranking its saved index see the same numbers.
        return index, index.vectors()
    except ValueError:  # ivf / ivfpq keep no exact vectors: the embeddings themselves
        return index, feats


def rerank_search(index, qf, gf, k: int):
    """``SearchResult`` of each query's k nearest gallery entries after re-ranking."""
    from ..retrieval import KReciprocalReranker

    reranker = KReciprocalReranker(qf, gf, index.metric)
    dist, idx = reranker.topk(k)
    return index.gather(idx.cpu().numpy(), dist.cpu().numpy())


def ranked_hits(result, queries: list[str]) -> dict[str, list[dict]]:
    """``{query: [hit, ...]}`` from a ``SearchResult``; missing hits (-1) end a list."""
    ranked = {}
    for qi, query in enumerate(queries):
        hits = []
        for r in range(result.indices.shape[1]):
            if result.indices[qi, r] < 0:
                break
            hits.append(
                {
                    "rank": r + 1,
                    "gallery": str(result.paths[qi, r]) if result.paths is not None else "",
                    "distance": float(result.distances[qi, r]),
                    "pid": int(result.pids[qi, r]) if result.pids is not None else -1,
                    "camid": int(result.camids[qi, r]) if result.camids is not None else -1,
                }
            )
        ranked[query] = hits
    return ranked


def write_tables(out: Path, ranked: dict[str, list[dict]]) -> list[str]:
    """``results.csv`` (one row a hit) and ``results.json``, written atomically."""
    from ..utils.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS)
    writer.writeheader()
    writer.writerows({"query": q, **hit} for q, hits in ranked.items() for hit in hits)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.json", json.dumps(ranked, indent=1))
    return ["results.csv", "results.json"]


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


def write_png(out: Path, result, queries: list[str], log=print, metric=None) -> list[str]:
    """``results.png`` (the first queries' top hits) when the tiles have image files;
    ``metric`` names the distances printed under the tiles."""
    from ..viz.ranked import plot_ranked_results

    shown, cols, note = png_rows(result, queries)
    written = []
    if cols:
        q_ids = np.array([parse_identity(q)[0] for q in queries[:shown]])
        matches = None
        if (q_ids >= 0).all() and result.pids is not None:
            matches = result.pids[:shown, :cols] == q_ids[:, None]
        plot_ranked_results(
            queries[:shown], list(result.paths[:shown, :cols].ravel()),
            np.arange(shown * cols).reshape(shown, cols), matches, out / "results.png",
            distances=result.distances[:shown, :cols], metric=metric,
            title=f"{len(queries)} quer{'ies' if len(queries) > 1 else 'y'} ranked"
            f"{'' if shown == len(queries) else f' (the first {shown} shown)'}: top {cols} by "
            f"{metric} distance",
        )  # fmt: skip
        written.append("results.png")
    if note:
        log(f"PNG: {note}" if cols else f"no PNG: {note}")
    return written


def format_preview(ranked: dict[str, list[dict]], distance: str) -> str:
    """The first queries' best hits, distances to 4 significant digits (so neighbours
    differ), ``match`` where the file names give both the same identity.

    Args:
        ranked: ``ranked_hits``'s lists; distance: what the distances are, for the header.
    """
    shown = list(ranked.items())[:PREVIEW_QUERIES]
    hits = min(PREVIEW_HITS, max((len(h) for _, h in shown), default=0))
    lines = [
        f"best {hits} hits of {'the first ' if len(ranked) > len(shown) else ''}{len(shown)} "
        f"quer{'ies' if len(shown) > 1 else 'y'} ({distance}, smaller is closer; every hit "
        "in results.csv):"
    ]
    for query, found in shown:
        pid = parse_identity(query)[0]
        lines.append(f"  {Path(query).name}")
        for hit in found[:hits]:
            same = pid >= 0 and hit["pid"] == pid
            name = Path(hit["gallery"]).name if hit["gallery"] else f"(entry {hit['rank']})"
            lines.append(
                f"    {hit['rank']:>3}  {hit['distance']:<10.4g} {name}{'  match' if same else ''}"
            )
    return "\n".join(lines)


def retrieve_folder(
    checkpoint: str | os.PathLike,
    query: str | os.PathLike,
    gallery: str | os.PathLike,
    output_dir: str | os.PathLike = "retrieval",
    *,
    topk: int = 10,
    metric: str | None = None,
    kind: str | None = None,
    save_index: str | os.PathLike | None = None,
    rerank: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    log: Callable[[str], object] = print,
) -> Retrieval:
    """Rank ``gallery`` for every image of ``query``; write CSV, JSON and a PNG.

    Args:
        checkpoint: a reid_dhm checkpoint; its deployed model embeds the images.
        query: an image file or a folder of images.
        gallery: a folder of images (embedded and indexed here) or a saved
            ``GalleryIndex`` file.
        output_dir: where ``results.csv`` / ``.json`` / ``.png`` go (created).
        topk: hits per query (at most the gallery's size).
        metric: ``'cosine'`` or ``'euclidean'``; None: a saved index's own, else the
            checkpoint's ``test.metric`` (how ``reid-dhm test`` ranks).
        kind: the faiss index built for a gallery folder (default ``'flat'``);
            save_index: also save a folder's index there.
        rerank: k-reciprocal re-ranking (needs the gallery features: a folder, or a
            saved flat / hnsw index).
        batch_size, device: of the feature extractor.
        log: where progress and notes go.

    Returns:
        A :class:`Retrieval`.
    """
    from ..inference import FeatureExtractor, list_images
    from ..utils.checkpoint import load_checkpoint
    from ..utils.io import check_output_dir

    check_retrieve_args(topk, gallery, save_index, kind)
    # A place that cannot be written fails now, not after everything is embedded.
    out = check_output_dir(output_dir, "--output-dir")
    if save_index:
        check_output_dir(Path(save_index).absolute().parent, "--save-index's folder")
    ckpt = load_checkpoint(checkpoint)
    extractor = FeatureExtractor.from_checkpoint(ckpt, batch_size=batch_size, device=device)
    queries = list_images(query)  # a bad query path fails before the gallery is embedded
    source = Path(gallery)
    if source.is_file():
        index, gallery_feats = load_gallery_index(source, extractor, metric, rerank, log)
        metric, why = pick_metric(metric, ckpt, index.metric)
    else:
        metric, why = pick_metric(metric, ckpt)
        index, gallery_feats = build_gallery_index(
            source, extractor, metric, kind, save_index, rerank, log
        )
    log(f"ranking by {metric} distance ({METRIC_MEANING[metric]}): {why}")
    qf = extractor(queries)
    k = min(topk, len(index))
    result = rerank_search(index, qf, gallery_feats, k) if rerank else index.search(qf, k)
    ranked = ranked_hits(result, queries)
    shown_metric = "re-ranked" if rerank else metric
    written = write_tables(out, ranked) + write_png(out, result, queries, log, shown_metric)
    meaning = f"{metric} distance: {METRIC_MEANING[metric]}"
    log(format_preview(ranked, "re-ranked distance" if rerank else meaning))
    if rerank:
        log(RERANK_NOTE)
    log(f"{len(queries)} queries ranked; wrote {', '.join(written)} in {out}")
    return Retrieval(ranked, result, out, written, metric)


__all__ = [
    "PNG_QUERIES",
    "Retrieval",
    "format_preview",
    "parse_identity",
    "pick_metric",
    "png_rows",
    "retrieve_folder",
]
