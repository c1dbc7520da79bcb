"""The text lines both engines print: per-epoch summaries, in-epoch progress, time left.

Every line fits ``WIDTH`` columns (a 120-column terminal does not wrap them). Values
per branch are joined by ``/`` in the model's branch order (``main`` first), which the
run's first line names (``branches main/aux1/aux2``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tqdm import tqdm

WIDTH = 120


def duration(seconds: float) -> str:
    """``1:02:03`` / ``02:03`` (tqdm's own format, as its bars show it)."""
    return tqdm.format_interval(max(0.0, seconds))


def _per_branch(record: Mapping, prefix: str, fmt: str) -> str | None:
    values = [v for k, v in record.items() if k.startswith(prefix)]
    return "/".join(format(v, fmt) for v in values) if values else None


def epoch_terms(
    record: Mapping, digits: int = 3, per_branch: str = "ce acc", ce_digits: int | None = None
) -> str:
    """``loss``, the CE terms per branch, the KL and triplet totals and each branch's
    training accuracy (%), compactly: ``loss 17.450  ce 5.295/5.271/5.255  kl 1.629
    acc 1.3/1.8/1.9%``.

    The pairwise ``kl/<t>-><s>`` terms (six with two aux branches) would crowd the line;
    their sum stands for them as ``kl`` (``tri`` for the ``tri/<branch>`` terms), while
    TensorBoard, the history and the curves keep every term.

    Args:
        digits: decimals of the loss, KL and triplet terms.
        per_branch: which of ``ce`` / ``acc`` show every branch (the others: main only).
        ce_digits: decimals of the CE terms (default ``digits``).
    """
    ce_digits = digits if ce_digits is None else ce_digits
    parts = [f"loss {record['loss']:.{digits}f}"] if "loss" in record else []
    ce = _per_branch(record, "ce/", f".{ce_digits}f")
    if ce is not None:
        parts.append(f"ce {ce if 'ce' in per_branch else ce.split('/')[0]}")
    for prefix in ("kl", "tri"):
        values = [v for k, v in record.items() if k.startswith(prefix + "/")]
        if values:
            parts.append(f"{prefix} {sum(values):.{digits}f}")
    acc = _per_branch(record, "acc/", ".1f")
    if acc is not None:
        parts.append(f"acc {acc if 'acc' in per_branch else acc.split('/')[0]}%")
    return "  ".join(parts)


# Ever shorter forms of the epoch line, for lines that would not fit (many branches, a
# triplet term, long runs): (branches shown per branch, CE decimals, the frozen tag).
_FORMS = (
    ("ce acc", None, "[backbone frozen]"),
    ("ce acc", None, "[frozen]"),
    ("ce acc", 2, "[frozen]"),
    ("acc", None, "[frozen]"),
    ("", None, "[frozen]"),
)


def epoch_line(record: Mapping, max_epoch: int, digits: int = 3, left: float | None = None) -> str:
    """The line after each epoch, at most ``WIDTH`` columns:
    ``epoch 3/60  loss ...  lr 3.00e-04  41 s  left 40:12``.

    Args:
        record: the epoch's record (``epoch`` 1-based, ``lr``, ``seconds``, loss terms,
            ``frozen``); left: seconds the run still needs (None: not shown).
    """
    head = f"epoch {record['epoch']}/{max_epoch}"
    line = ""
    for per_branch, ce_digits, frozen in _FORMS:  # the first that fits
        tail = f"lr {record['lr']:.2e}" + (f"  {frozen}" if record.get("frozen") else "")
        tail += f"  {record['seconds']:.0f} s"
        if left is not None:
            tail += f"  left {duration(left)}"
        line = f"{head}  {epoch_terms(record, digits, per_branch, ce_digits)}  {tail}"
        if len(line) <= WIDTH:
            break
    return line[:WIDTH]


def progress_line(
    epoch: int,
    max_epoch: int,
    step: int,
    total: int | None,
    loss: float,
    lr: float,
    left: float | None = None,
) -> str:
    """``epoch 3/60 [40/404]  loss 2.3456  lr 3.00e-04  left 1:02:03``: one line of a
    log (no terminal).

    Args:
        epoch: 1-based epoch; step: 1-based iteration in it; total: iterations per epoch;
        left: seconds the whole run still needs (None: not shown).
    """
    where = f"{step}/{total}" if total else f"{step}"
    line = f"epoch {epoch}/{max_epoch} [{where}]  loss {loss:.4f}  lr {lr:.2e}"
    return line if left is None else f"{line}  left {duration(left)}"


class RunClock:
    """Time left for a whole run, from the iterations done so far.

    Args:
        total: iterations the run trains (epochs x iterations per epoch).
    """

    def __init__(self, total: int):
        self.total, self.done, self.start = int(total), 0, time.monotonic()

    def tick(self, n: int = 1) -> None:
        self.done += n

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float | None:
        """Seconds left at the mean pace so far (evaluations included); None before
        the first iteration."""
        if self.done <= 0:
            return None
        return self.elapsed() / self.done * max(self.total - self.done, 0)
