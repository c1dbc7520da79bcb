"""Argument checks shared by models, losses and retrieval: one rule, one message."""

from __future__ import annotations

import operator
from collections.abc import Iterable


def check_int(value, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]``, else a one-line ``ValueError``.

    Any integer type counts (``operator.index``: numpy integers from a label array,
    torch integer scalars) and becomes a plain int (JSON and faiss' SWIG layer reject
    numpy scalars). bool and float (even integral ones such as ``1e6`` or ``5.0``) are
    rejected, not truncated: a float count is a bug upstream, not something to round.
    """
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return number


def branch_name_tuple(names: Iterable[str], what: str) -> tuple[str, ...]:
    """``names`` as a tuple; a bare string is refused with a ``ValueError``.

    ``tuple('aux1')`` would silently become ``('a', 'u', 'x', '1')``; ``what`` names
    the argument in the message.
    """
    if isinstance(names, str):
        raise ValueError(
            f"{what} must be a list of branch names, not the string {names!r} (write [{names!r}])"
        )
    return tuple(names)
