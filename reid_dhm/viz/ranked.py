"""Ranked retrieval results as one PNG: a row per query, its top-k gallery images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..retrieval.result import ReidEvaluation
from ..utils.images import NO_PIXEL_LIMIT, read_image
from ..utils.io import atomic_path


def _thumb(path: str, size: tuple[int, int], border: tuple[int, int, int] | None) -> Image.Image:
    h, w = size
    # The evaluation read these files under the run's own pixel limit.
    img = read_image(path, NO_PIXEL_LIMIT, warn_large=False)
    tile = img.resize((w, h), Image.BILINEAR)
    if border is not None:
        ImageDraw.Draw(tile).rectangle([0, 0, w - 1, h - 1], outline=border, width=3)
    return tile


def plot_ranked_results(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    ranked: np.ndarray,
    matches: np.ndarray | None,
    path: str | os.PathLike,
    distances: np.ndarray | None = None,
    tile: tuple[int, int] = (128, 64),
) -> Path:
    """One row per query: the query, then its top-k gallery images.

    Args:
        query_paths: (Q,) image files of the queries shown.
        gallery_paths: all gallery image files.
        ranked: (Q, k) gallery indices in rank order.
        matches: (Q, k) booleans, True where the gallery image has the query's identity
            (green border; red otherwise), or None when identities are unknown (grey).
        distances: optional (Q, k) distances printed under each tile.
    """
    q, k = ranked.shape
    h, w = tile
    pad, label = 4, 14
    gap = w // 2
    width = pad + w + gap + k * (w + pad)
    height = pad + q * (h + label + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(q):
        y = pad + i * (h + label + pad)
        sheet.paste(_thumb(query_paths[i], tile, (40, 40, 40)), (pad, y))
        draw.text((pad, y + h + 1), "query", fill=(0, 0, 0))
        for j in range(k):
            x = pad + w + gap + j * (w + pad)
            if matches is None:
                colour = (90, 90, 90)
            else:
                colour = (0, 170, 0) if matches[i, j] else (220, 0, 0)
            sheet.paste(_thumb(gallery_paths[ranked[i, j]], tile, colour), (x, y))
            text = f"{j + 1}" if distances is None else f"{j + 1}: {distances[i, j]:.2f}"
            draw.text((x, y + h + 1), text, fill=colour)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def write_ranked_png(evaluation: ReidEvaluation, path, queries: int = 6, topk: int = 8) -> Path:
    """Top-k gallery images for ``queries`` queries spread over the evaluation's query set.

    Ranked by the evaluation's own distance (``ReidEvaluation.distances``: metric and
    re-ranking), so the picture shows the ranking the printed numbers were computed
    on; as in the metrics, same-identity images from the query's camera are hidden.
    """
    q, g = evaluation.query, evaluation.gallery
    n = min(queries, len(q))
    picks = np.linspace(0, len(q) - 1, n).astype(int)
    dist = evaluation.distances(picks)
    junk = (g.pids[None, :] == q.pids[picks, None]) & (g.camids[None, :] == q.camids[picks, None])
    dist[torch.from_numpy(junk)] = float("inf")
    k = min(topk, len(g))
    d, idx = dist.topk(k, dim=1, largest=False)
    idx = idx.numpy()
    matches = g.pids[idx] == q.pids[picks, None]
    return plot_ranked_results(
        [q.paths[i] for i in picks], g.paths, idx, matches, path, distances=d.numpy()
    )


__all__ = ["plot_ranked_results", "write_ranked_png"]
