"""Ranked retrieval results as one PNG: a row per query, its top-k gallery images.

The sheet carries a title (what was ranked, by which distance), a legend (green: same
identity as the query, red: another identity, grey: unknown), and under every image its
identity and camera as the file name spells them (``0198_c2...``: ``id 198 c2``), its
rank and its distance to the query, named and with enough decimals that neighbours
differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..retrieval.result import ReidEvaluation
from ..utils.images import NO_PIXEL_LIMIT, read_image
from ..utils.io import atomic_path
from .labels import image_label

GREEN, RED, GREY, DARK = (0, 160, 0), (215, 0, 0), (110, 110, 110), (40, 40, 40)
FONT_SIZE = 10
LINE = FONT_SIZE + 3  # pixels per label line


def distance_decimals(distances: np.ndarray, least: int = 2, most: int = 6) -> int:
    """The fewest decimals (``least`` .. ``most``) at which the distances of each row that
    differ also print differently.

    Args:
        distances: (Q, k) distances, each row in rank order.
    """
    d = np.asarray(distances, dtype=np.float64)
    for decimals in range(least, most + 1):
        shown = np.round(d, decimals)
        differ = np.abs(np.diff(d, axis=-1)) > 10.0 ** -(most + 2)
        if not (differ & (np.diff(shown, axis=-1) == 0)).any():
            return decimals
    return most


@dataclass
class RankedLabels:
    """The text of the sheet: ``query[i]`` lines under query ``i``, ``tiles[i][j]`` lines
    under its rank-``j + 1`` image, ``legend`` the line that explains the numbers."""

    query: list[list[str]]
    tiles: list[list[list[str]]]
    legend: str


def ranked_labels(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    ranked: np.ndarray,
    distances: np.ndarray | None = None,
    metric: str | None = None,
    first_match: Sequence[int | None] | None = None,
) -> RankedLabels:
    """Labels of every query and tile (identity and camera as in the file names).

    Args:
        query_paths: (Q,) image files; gallery_paths: all gallery image files.
        ranked: (Q, k) gallery indices in rank order.
        distances: optional (Q, k) distances to the query.
        metric: the distance's name (``'euclidean'``, ``'cosine'``); None: ``'distance'``.
        first_match: per query, the rank (1-based) of its first true match when it lies
            beyond the top-k (None where it is inside, or there is none).
    """
    name = metric or "distance"
    decimals = distance_decimals(distances) if distances is not None else 0
    queries, tiles = [], []
    for i, row in enumerate(np.asarray(ranked)):
        lines = ["query", image_label(query_paths[i])]
        if first_match is not None and first_match[i] is not None:
            lines.append(f"1st match: rank {first_match[i]}")
        queries.append(lines)
        cells = []
        for j, g in enumerate(row):
            cell = [f"{j + 1}: {image_label(gallery_paths[g], width=10)}"]
            if distances is not None:
                cell.append(f"{name} {distances[i, j]:.{decimals}f}")
            cells.append(cell)
        tiles.append(cells)
    legend = "under each image: rank, identity and camera (as in the file name)"
    if distances is not None:
        legend += f", {name} distance to the query" + (" (lower = closer)" if metric else "")
    return RankedLabels(queries, tiles, legend)


def _thumb(path: str, size: tuple[int, int], border: tuple[int, int, int] | None) -> Image.Image:
    h, w = size
    # The evaluation read these files under the run's own pixel limit.
    img = read_image(path, NO_PIXEL_LIMIT, warn_large=False)
    tile = img.resize((w, h), Image.BILINEAR)
    if border is not None:
        ImageDraw.Draw(tile).rectangle([0, 0, w - 1, h - 1], outline=border, width=3)
    return tile


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """DejaVu Sans (matplotlib ships it), else Pillow's own font."""
    try:
        from matplotlib import get_data_path

        return ImageFont.truetype(str(Path(get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _text_width(font, lines: Sequence[str]) -> int:
    return max((int(font.getlength(t)) for t in lines), default=0)


def _legend(draw: ImageDraw.ImageDraw, font, x: int, y: int, matches_known: bool) -> int:
    """Colour keys from ``x``; returns the x after them."""
    keys = [(GREEN, "same identity"), (RED, "different identity")]
    if not matches_known:
        keys = [(GREY, "identity unknown")]
    for colour, text in keys:
        draw.rectangle([x, y + 2, x + 10, y + 12], outline=colour, width=3)
        draw.text((x + 15, y), text, fill=colour, font=font)
        x += 15 + int(font.getlength(text)) + 16
    return x


def plot_ranked_results(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    ranked: np.ndarray,
    matches: np.ndarray | None,
    path: str | os.PathLike,
    distances: np.ndarray | None = None,
    tile: tuple[int, int] = (128, 64),
    *,
    metric: str | None = None,
    title: str | None = None,
    first_match: Sequence[int | None] | None = None,
) -> Path:
    """One row per query: the query, then its top-k gallery images, labelled.

    Args:
        query_paths: (Q,) image files of the queries shown.
        gallery_paths: all gallery image files.
        ranked: (Q, k) gallery indices in rank order.
        matches: (Q, k) booleans, True where the gallery image has the query's identity
            (green border; red otherwise), or None when identities are unknown (grey).
        distances: optional (Q, k) distances printed under each tile, named ``metric``.
        tile: (H, W) of every image; title: the sheet's first line (default: ranked
            results, top-k); first_match: see :func:`ranked_labels`.
    """
    q, k = ranked.shape
    h, w = tile
    labels = ranked_labels(query_paths, gallery_paths, ranked, distances, metric, first_match)
    font, big = _font(), _font(FONT_SIZE + 3)
    pad, gap = 6, 20
    col = max(w, *(_text_width(font, c) for r in labels.tiles for c in r)) + pad
    qcol = max(w, *(_text_width(font, c) for c in labels.query)) + pad
    lines = max(len(c) for r in labels.tiles + [labels.query] for c in r)
    row_h = h + 2 + lines * LINE + pad
    head = 3 * LINE + 4 * pad  # title, legend, explanation
    title = title or f"Ranked results: top {k} per query"
    width = max(
        2 * pad + qcol + gap + k * col,
        2 * pad + int(big.getlength(title)),
        2 * pad + int(font.getlength(labels.legend)),
    )
    sheet = Image.new("RGB", (width, head + q * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill=(0, 0, 0), font=big)
    _legend(draw, font, pad, pad + LINE + 6, matches is not None)
    draw.text((pad, pad + 2 * LINE + 8), labels.legend, fill=DARK, font=font)
    for i in range(q):
        y = head + i * row_h
        sheet.paste(_thumb(query_paths[i], tile, DARK), (pad + (qcol - w) // 2, y))
        for n, text in enumerate(labels.query[i]):
            draw.text((pad, y + h + 2 + n * LINE), text, fill=(0, 0, 0), font=font)
        for j in range(k):
            x = pad + qcol + gap + j * col
            colour = GREY if matches is None else (GREEN if matches[i, j] else RED)
            sheet.paste(_thumb(gallery_paths[ranked[i, j]], tile, colour), (x, y))
            for n, text in enumerate(labels.tiles[i][j]):
                draw.text((x, y + h + 2 + n * LINE), text, fill=colour, font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return Path(path)


def first_true_ranks(dist: torch.Tensor, same: np.ndarray) -> list[int | None]:
    """Per row, the 1-based rank of the nearest same-identity column (junk already at
    ``inf``), or None where there is none.

    Args:
        dist: (Q, G) distances; same: (Q, G) booleans, True for a true match.
    """
    out = []
    for row, hits in zip(dist.numpy(), same):
        cand = hits & np.isfinite(row)
        if not cand.any():
            out.append(None)
            continue
        nearest = row[cand].min()
        out.append(int((row < nearest).sum()) + 1)
    return out


def write_ranked_png(evaluation: ReidEvaluation, path, queries: int = 6, topk: int = 8) -> Path:
    """Top-k gallery images for ``queries`` queries spread over the evaluation's query set.

    Ranked by the evaluation's own distance (``ReidEvaluation.distances``: metric and
    re-ranking), so the picture shows the ranking the printed numbers were computed
    on; as in the metrics, same-identity images from the query's camera are hidden.
    A query with no true match in its top-k names the rank of its first one.
    """
    q, g = evaluation.query, evaluation.gallery
    n = min(queries, len(q))
    picks = np.linspace(0, len(q) - 1, n).astype(int)
    dist = evaluation.distances(picks)
    same = g.pids[None, :] == q.pids[picks, None]
    junk = same & (g.camids[None, :] == q.camids[picks, None])
    dist[torch.from_numpy(junk)] = float("inf")
    k = min(topk, len(g))
    d, idx = dist.topk(k, dim=1, largest=False)
    idx = idx.numpy()
    matches = g.pids[idx] == q.pids[picks, None]
    first = [r if r is not None and r > k else None for r in first_true_ranks(dist, same)]
    rerank = ", re-ranked" if evaluation.rerank else ""
    title = (
        f"{evaluation.dataset or 'evaluation'}: top {k} of {len(g)} gallery images for {n} of "
        f"{len(q)} queries, {evaluation.metric} distance{rerank} (same-camera matches hidden)"
    )
    return plot_ranked_results(
        [q.paths[i] for i in picks], g.paths, idx, matches, path, distances=d.numpy(),
        metric="re-ranked" if evaluation.rerank else evaluation.metric, title=title,
        first_match=first,
    )  # fmt: skip


__all__ = [
    "distance_decimals",
    "first_true_ranks",
    "plot_ranked_results",
    "ranked_labels",
    "write_ranked_png",
]
