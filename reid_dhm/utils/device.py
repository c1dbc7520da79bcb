"""Device selection and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor

# Device types this package runs on. Other torch device types (xpu, meta, ...) are
# rejected up front: nothing here is tested on them, and they would fail deep inside
# a kernel instead of at the argument.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(device: str | torch.device) -> torch.device | None:
    """A device argument as a ``torch.device``, or None for ``'auto'``; ``'gpu'`` = ``'cuda'``.

    Checks only the spelling (not whether the device exists): a one-line ``ValueError``
    for anything that is not ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:K'``, ``'gpu'``,
    ``'gpu:K'`` or ``'mps'`` (or a ``torch.device`` of those types).
    """
    if isinstance(device, str):
        if device == "auto":
            return None
        if device == "gpu" or device.startswith("gpu:"):
            device = "cuda" + device[3:]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:K' (or 'gpu') or 'mps'"
        )
    return dev


def resolve_device(
    device: str | torch.device = "auto",
    *tensors,
    supported: tuple[str, ...] = DEVICE_TYPES,
) -> torch.device:
    """The device to compute on.

    Args:
        device: ``'auto'``: the device of the first of ``tensors`` that is a torch tensor
            on a non-CPU device of a ``supported`` type, else CUDA when torch sees one,
            else CPU. Otherwise a device as ``parse_device`` reads it.
        tensors: inputs whose device ``'auto'`` follows (anything else is ignored).
        supported: device types the caller can run on.

    Raises:
        ValueError (one line): unknown or unsupported device, or a CUDA device (index) /
        MPS that torch does not see.
    """
    dev = parse_device(device)
    if dev is None:
        for t in tensors:
            if isinstance(t, Tensor) and t.device.type != "cpu" and t.device.type in supported:
                return t.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type not in supported:
        valid = ", ".join(repr(s) for s in ("auto", *supported))
        raise ValueError(f"device {str(device)!r} is not supported here; use one of {valid}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} requested but torch sees no CUDA device")
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} requested but torch sees only {count} CUDA device(s)"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} requested but torch sees no MPS device")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
