"""The text lines both engines print: per-epoch summaries and in-epoch progress."""

from __future__ import annotations

from collections.abc import Mapping


def epoch_terms(record: Mapping, digits: int = 3) -> str:
    """``loss``, each ``ce/<branch>``, the KL and triplet totals and each branch's
    accuracy, compactly.

    The pairwise ``kl/<t>-><s>`` terms (six with two aux branches) would crowd the line;
    their sum stands for them here as ``kl`` (``tri`` for the ``tri/<branch>`` terms),
    while TensorBoard and the history keep every term.
    """
    parts = [f"{k} {v:.{digits}f}" for k, v in record.items() if k.startswith(("loss", "ce/"))]
    for prefix in ("kl", "tri"):
        values = [v for k, v in record.items() if k.startswith(prefix + "/")]
        if values:
            parts.append(f"{prefix} {sum(values):.{digits}f}")
    parts += [f"{k} {v:.1f}" for k, v in record.items() if k.startswith("acc/")]
    return "  ".join(parts)


def progress_line(epoch: int, max_epoch: int, step: int, total: int | None, loss: float, lr: float):
    """``epoch 3/60 [40/404]  loss 2.3456  lr 3.00e-04``: one line of a log (no terminal).

    Args:
        epoch: 1-based epoch; step: 1-based iteration in it; total: iterations per epoch.
    """
    where = f"{step}/{total}" if total else f"{step}"
    return f"epoch {epoch}/{max_epoch} [{where}]  loss {loss:.4f}  lr {lr:.2e}"
