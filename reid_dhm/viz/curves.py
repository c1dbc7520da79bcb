"""Training curves per branch: loss terms, accuracy, test metrics, gradient monitor."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

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


__all__ = ["plot_training_curves"]
