"""Input checks and conversions shared by ``evaluate``, re-ranking and ``GalleryIndex``.

Every check raises a one-line ``ValueError`` that names the offending argument, so a
pipeline that feeds the wrong array fails at the boundary instead of deep in a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..utils.device import resolve_device

METRICS = ("euclidean", "cosine")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(METRICS)}")
    return metric


def compute_device(device: str | torch.device, *tensors) -> torch.device:
    """``utils.device.resolve_device`` for the ranking code, which runs on CPU (numpy) or
    CUDA (torch) only; ``'auto'`` follows a CUDA input."""
    return resolve_device(device, *tensors, supported=("cpu", "cuda"))


def as_features(x, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """``x`` (N, D) as a contiguous float32 tensor on ``device``, and its squared row norms.

    Zero-copy for a contiguous float32 CPU array or tensor already on ``device``.
    Raises for a bad shape, NaN/Inf, or rows whose squared norm overflows float32.
    """
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as exc:
            raise ValueError(f"{name} must be a numeric (N, D) array or tensor: {exc}") from None
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.float32).contiguous()
    return t, finite_squared_norms(t, name)


def squared_norms(x: Tensor) -> Tensor:
    """(N,) sums of squares of the rows of ``x`` (N, D).

    Bit-identical to ``x.pow(2).sum(1)`` (torchreid's), but through one reused 32 MB
    scratch buffer instead of an (N, D) temporary (4 GB for a 500k x 2048 gallery);
    blocks are large so a busy machine does not stall on many small parallel ops.
    Exact for small integer-valued features.
    """
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, (1 << 23) // max(1, x.shape[1]))
    scratch = torch.empty((min(step, x.shape[0]), x.shape[1]), dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], step):
        block = x[s : s + step]
        sq = torch.mul(block, block, out=scratch[: block.shape[0]])
        torch.sum(sq, dim=1, out=out[s : s + step])
    return out


def finite_squared_norms(t: Tensor, name: str) -> Tensor:
    """Squared row norms of ``t`` (N, D); raises if ``t`` holds NaN/Inf or they overflow.

    A row with NaN/Inf has a NaN/Inf squared norm, so this one pass (needed anyway for
    the distances) screens everything; only flagged rows are inspected further.
    """
    sq = squared_norms(t)
    bad_rows = (~torch.isfinite(sq)).nonzero().flatten()
    if bad_rows.numel():
        for r in bad_rows.tolist():
            if not bool(torch.isfinite(t[r]).all()):
                raise ValueError(f"{name} contains NaN or Inf values (first in row {r})")
        raise ValueError(
            f"{name} row {int(bad_rows[0])} has values too large for float32 distances"
        )
    return sq


def check_same_dim(qf: Tensor, gf: Tensor, qname: str = "qf", gname: str = "gf") -> None:
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {qname} has {qf.shape[1]}, {gname} has {gf.shape[1]}"
        )


def as_labels(x, name: str, length: int, length_of: str) -> np.ndarray:
    """``x`` as a 1-D int64 numpy array of ``length`` entries (pids or camids)."""
    if isinstance(x, Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, (np.ndarray, Sequence)):
        arr = np.asarray(x)
    else:
        raise ValueError(f"{name} must be a 1-D array, list or tensor, got {type(x).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != length:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries, expected one per {length_of} ({length})"
        )
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"{name} must hold integers, got non-integral values")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values too large for int64")
    return arr.astype(np.int64, copy=False)
