"""PNG reports: training curves per branch, and ranked retrieval results."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..utils.io import atomic_path


def plot_training_curves(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Per-epoch loss terms and per-branch accuracy (and test metrics when present).

    Args:
        history: one mapping per epoch with ``epoch`` and averaged terms such as
            ``loss``, ``ce/main``, ``kl/aux1->main``, ``acc/main``; optional
            ``test/mAP``, ``test/rank1``, and the gradient monitor's ``grad/cos/<p>~<q>``
            and ``grad/norm/<b>``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k in h})
    panels = [
        ("cross-entropy per branch", [k for k in keys if k.startswith("ce/")] + ["loss"]),
        ("KL mimicking (teacher->student)", [k for k in keys if k.startswith("kl/")]),
        ("training accuracy per branch (%)", [k for k in keys if k.startswith("acc/")]),
        ("test (main branch)", [k for k in keys if k.startswith("test/")]),
        # The gradient monitor's pair-level and branch-level means (per-stage keys have
        # one more '/', and would crowd the panels: they stay in TensorBoard / JSON).
        (
            "gradient cosine on the shared stem",
            [k for k in keys if k.startswith("grad/cos/") and k.count("/") == 2],
        ),
        (
            "gradient norm on the stem",
            [k for k in keys if k.startswith("grad/norm/") and k.count("/") == 2],
        ),
    ]
    panels = [(t, ks) for t, ks in panels if ks]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, ks) in zip(axes.flat, panels):
        for k in ks:
            pts = [(e, h[k]) for e, h in zip(epochs, history) if k in h]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def _thumb(path: str, size: tuple[int, int], border: tuple[int, int, int] | None) -> Image.Image:
    h, w = size
    with Image.open(path) as img:
        tile = img.convert("RGB").resize((w, h), Image.BILINEAR)
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
