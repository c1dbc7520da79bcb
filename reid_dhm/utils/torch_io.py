"""The one safe reader of PyTorch files (weights and checkpoints alike).

Every ``.pth`` the toolkit opens goes through :func:`read_torch_file`: ``torch.load``
with ``weights_only=True`` (nothing in the file can run code), numpy scalars and
arrays allowed explicitly (torchreid's checkpoints store ``rank1`` as one), and any
failure turned into a one-line ``ValueError`` that names the file. Also here: the
key clean-up that checkpoints of wrapped models need (``module.`` from
(Distributed)DataParallel, ``_orig_mod.`` from ``torch.compile``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Key prefixes that wrappers add in front of a model's own names, in any nesting.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch names the refused callable either way, depending on the pickle's layout.
_UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def numpy_safe_globals() -> list:
    """The numpy types ``weights_only`` loading may rebuild: scalars, arrays, dtypes.

    torchreid's ``save_checkpoint`` stores metrics such as ``rank1`` as numpy scalars;
    these types only carry numbers, so allowing them keeps the load free of code.
    """
    dtypes = {type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}
    types = [np.dtype, np.ndarray, *sorted(dtypes, key=lambda t: t.__name__)]
    try:
        core = np._core.multiarray
    except AttributeError:  # numpy < 2
        core = np.core.multiarray
    types += [core.scalar, core._reconstruct]
    return types


def _short_reason(err: Exception) -> str:
    """What went wrong, in a few words, without torch's advice to unpickle unsafely."""
    text = _ANSI.sub("", str(err))
    if "WeightsUnpickler error:" in text:
        # torch wraps the real cause in paragraphs about weights_only=False; keep the cause.
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return {EOFError: "the file ends early"}.get(type(err), type(err).__name__)
    first = lines[0].split(". ")[0].rstrip(".")
    if "weights_only" in first:  # only torch's advice was left: say what it is about
        return "content that weights_only loading does not support"
    if isinstance(err, (KeyError, IndexError)):  # e.g. KeyError: 101 from garbage bytes
        return f"unreadable data: {type(err).__name__} {first}"
    return first


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with numpy values allowed and clear errors.

    Args:
        path: the file to read.
        map_location: passed to ``torch.load``.
        what: how error messages call the file, e.g. ``'checkpoint'``, ``'weight file'``.

    Returns:
        The loaded object (tensors, plain Python values, numpy scalars/arrays).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: one line naming ``path``: the file is damaged or not a PyTorch
            file, or it holds other Python objects and is refused for safety.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror}") from None
    except Exception as err:  # noqa: BLE001 - damaged bytes make torch raise any type
        unsafe = _UNSAFE_GLOBAL.search(str(err))
        if unsafe:
            raise ValueError(
                f"cannot read {what} {path}: refused for safety, since it holds Python objects "
                f"other than tensors and plain values ({unsafe.group(1)}) and loading it could "
                "run code"
            ) from None
        raise ValueError(
            f"cannot read {what} {path}: not a PyTorch file or damaged ({_short_reason(err)})"
        ) from None


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Keys without ``module.`` / ``_orig_mod.`` wrapper prefixes, however nested.

    DDP around a compiled model saves ``module._orig_mod.conv1.weight``, a compiled
    DDP model ``_orig_mod.module.conv1.weight``; both become ``conv1.weight``.
    """
    out = OrderedDict()
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


__all__ = [
    "WRAPPER_PREFIXES",
    "numpy_safe_globals",
    "read_torch_file",
    "strip_wrapper_prefixes",
]
