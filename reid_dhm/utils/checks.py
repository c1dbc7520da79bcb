"""Argument checks shared by models, losses and retrieval: one rule, one message."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Range:
    """A numeric range stated once, checked alike by the config schema and the library.

    ``Range(0, 1, high_open=True)`` is ``[0, 1)``; a bound left as None is unbounded.
    ``nullable`` also admits None (a key whose null means "the library's default").
    Used as ``Annotated`` metadata it validates a pydantic field (pydantic is only
    imported then, so library code that merely calls :meth:`check` does not load it).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def __contains__(self, value: object) -> bool:
        if value is None:
            return self.nullable
        # bool is an int to Python but never a count or a rate here.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        # inf and nan are never a rate, a weight or a count (nan passes every comparison).
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """``'> 0'``, ``'in [0, 1)'``, ``'null or in (0, 1]'``: what a value must be."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"null or {text}" if self.nullable else text

    def check(self, value, name: str):
        """``value`` unchanged if in range, else ``ValueError('<name> must be ...')``."""
        if value not in self:
            raise ValueError(f"{name} must be {self._what(value)}, got {value!r}")
        return value

    def _what(self, value) -> str:
        """What ``value`` must be; "a finite number" first when it is inf or nan."""
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        finite = not real or math.isfinite(value)
        return self.describe() if finite else f"a finite number {self.describe()}"

    def __get_pydantic_core_schema__(self, source, handler):
        from pydantic_core import core_schema

        def validate(value):
            if value not in self:
                # The config layer adds the dotted key and the value to this message.
                raise ValueError(f"must be {self._what(value)}")
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))


def _num(x: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': bounds read as people write them."""
    return str(int(x)) if float(x).is_integer() else str(x)


def check_choice(value, valid: Sequence, name: str, plural: str | None = None):
    """``value`` if one of ``valid``, else ``ValueError('unknown <name> ...; valid ... are')``."""
    if value not in valid:
        plural = plural or f"{name}s"
        raise ValueError(f"unknown {name} {value!r}; valid {plural} are {list(valid)}")
    return value
