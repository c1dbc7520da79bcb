"""Training curves in separate panels: total loss, each loss term per branch or pair,
accuracy, learning rate, the evaluation, the gradient monitor."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..utils.io import atomic_path

# Every series of a panel gets its own colour AND line style AND marker, so curves that
# coincide stay told apart (a dashed line over a solid one shows both).
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip
STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

# Names of the evaluation fields (percent) for the evaluation panel.
_TEST_NAMES = {
    "mAP": "mAP", "rank1": "Rank-1", "top1_err": "top-1 error", "top5_err": "top-5 error"
}  # fmt: skip


def _branch_key(name: str) -> tuple:
    """main first, then aux1, aux2, ... (numbers compared as numbers)."""
    parts = re.split(r"(\d+)", name)
    return (name != "main", [int(p) if p.isdigit() else p for p in parts])


def _series(keys: Sequence[str], prefix: str) -> list[tuple[str, str]]:
    """(key, legend label) of every ``prefix<name>`` key, branches in order; a KL key
    ``kl/aux1->main`` is labelled ``aux1 -> main``."""
    found = [k for k in keys if k.startswith(prefix) and k.count("/") == prefix.count("/")]

    def order(k):
        return [_branch_key(p) for p in k[len(prefix) :].split("->")]

    return [(k, k[len(prefix) :].replace("->", " \u2192 ")) for k in sorted(found, key=order)]


def _test_series(keys: Sequence[str]) -> list[tuple[str, str]]:
    """(key, label) of the evaluation fields: the main branch's (``test/<field>``)
    first, then other branches' (``test/<branch>/<field>``) in branch order."""
    out = []
    for k in keys:
        if not k.startswith("test/"):
            continue
        *branch, field = k.split("/")[1:]
        name = _TEST_NAMES.get(field, field)
        rank = list(_TEST_NAMES).index(field) if field in _TEST_NAMES else len(_TEST_NAMES)
        order = (bool(branch), _branch_key(branch[0]) if branch else (), rank)
        out.append((order, k, f"{branch[0]} {name}" if branch else name))
    return [(k, label) for _, k, label in sorted(out)]


def curve_panels(history: Sequence[Mapping]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The panels drawn for ``history``: ``[(title, [(key, legend label), ...]), ...]``,
    only those with data; a KL-weight panel only when the weight changes."""
    keys = sorted({k for h in history for k in h})
    kl_weights = {h["kl_weight"] for h in history if "kl_weight" in h}
    panels = [
        ("total loss", [("loss", "total")] if "loss" in keys else []),
        ("cross-entropy per branch", _series(keys, "ce/")),
        ("triplet per branch", _series(keys, "tri/")),
        ("KL mimicking (teacher \u2192 student)", _series(keys, "kl/")),
        ("training accuracy per branch (%)", _series(keys, "acc/")),
        ("learning rate", [("lr", "lr")] if "lr" in keys else []),
        ("KL weight", [("kl_weight", "KL weight")] if len(kl_weights) > 1 else []),
        ("evaluation (%)", _test_series(keys)),
        # The gradient monitor's pair-level and branch-level means (per-stage keys have
        # one more '/', and would crowd the panels: they stay in TensorBoard / JSON).
        ("gradient cosine on the shared stem", _series(keys, "grad/cos/")),
        ("gradient norm on the stem", _series(keys, "grad/norm/")),
    ]
    return [(t, s) for t, s in panels if s]


def _points(history: Sequence[Mapping], key: str) -> tuple[list, list]:
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    return list(zip(*pts)) if pts else ([], [])  # type: ignore[return-value]


def _draw_panel(ax, history, title: str, series, epochs: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    lengths = [len(_points(history, k)[0]) for k, _ in series]
    if title.startswith("evaluation") and max(lengths) == 1:
        _single_evaluation(ax, history, title, series)
        return
    for i, (key, label) in enumerate(series):
        xs, ys = _points(history, key)
        ax.plot(
            xs, ys, color=COLOURS[i % len(COLOURS)], linestyle=STYLES[i % len(STYLES)],
            marker=MARKERS[i % len(MARKERS)], markevery=max(1, len(xs) // 15),
            # Each later series is thinner, with smaller markers, and drawn on top:
            # equal curves show as nested lines instead of hiding one another.
            lw=max(1.0, 3.2 - 0.45 * i) if len(series) > 1 else 2.0,
            ms=max(3.0, 7.5 - 0.9 * i) if len(series) > 1 else 5.0, label=label, zorder=3 + i,
        )  # fmt: skip
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(set(epochs)) > 1:
        ax.set_xlim(min(epochs) - 0.2, max(epochs) + 0.2)
    values = [y for key, _ in series for y in _points(history, key)[1]]
    if title == "learning rate":
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # warm-up and step decays span decades
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if values and min(values) == max(values) and min(values) > 0:
        ax.set_ylim(0, 1.5 * max(values))  # a constant: a flat line, not a zoomed-in axis
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2 if len(series) > 4 else 1)


def _single_evaluation(ax, history, title: str, series) -> None:
    """One evaluation (after the last epoch): its values as text, not lone dots."""
    rows, epoch = [], None
    for key, label in series:
        xs, ys = _points(history, key)
        if xs:
            epoch = xs[0]
            rows.append(f"{label}: {ys[0]:.1f} %")
    ax.set_title(title, fontsize=11)
    ax.text(
        0.5, 0.55, "\n".join(rows), ha="center", va="center", fontsize=15,
        transform=ax.transAxes,
    )  # fmt: skip
    ax.text(
        0.5, 0.12, f"evaluated once, after epoch {epoch}\n(train.eval_freq adds a curve)",
        ha="center", va="center", fontsize=9, color="#555", transform=ax.transAxes,
    )  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def training_figure(history: Sequence[Mapping], title: str | None = None):
    """The matplotlib figure of :func:`plot_training_curves` (a panel per
    :func:`curve_panels` entry, three to a row), for the caller to save or inspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(history)
    epochs = [h["epoch"] for h in history]
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, series) in zip(axes.flat, panels):
        _draw_panel(ax, history, name, series, epochs)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def plot_training_curves(
    history: Sequence[Mapping], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Per-epoch loss terms, accuracy, learning rate and evaluation, a panel each.

    Args:
        history: one mapping per epoch with ``epoch`` and averaged terms such as
            ``loss``, ``lr``, ``ce/main``, ``kl/aux1->main``, ``tri/main``,
            ``acc/main``; optional ``kl_weight``, ``test/mAP``, ``test/rank1`` (percent;
            classification: ``test/top1_err``, ``test/<branch>/top1_err``), and the
            gradient monitor's ``grad/cos/<p>~<q>`` and ``grad/norm/<b>``.
        title: an optional line above the panels.
    """
    import matplotlib.pyplot as plt

    fig = training_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


__all__ = ["curve_panels", "plot_training_curves", "training_figure"]
