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


# Squared norms below this (values around 1e-15 and less) leave float32 distances
# little precision, and values below ~1e-45 become 0 when cast: such features are
# rescaled by a power of two first (exact, and it keeps the ranking).
TINY_SQUARED_NORM = 2.0**-100


def as_features(x, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """``x`` (N, D) as a contiguous float32 tensor on ``device``, and its squared row norms.

    Zero-copy for a contiguous float32 CPU array or tensor already on ``device``.
    Raises for a bad shape, NaN/Inf, or rows whose squared norm overflows float32.
    """
    t = _as_tensor(x, name)
    t = t.to(device=device, dtype=torch.float32).contiguous()
    return t, finite_squared_norms(t, name)


def _as_tensor(x, name: str) -> Tensor:
    """``x`` as a real 2-D non-empty tensor in its own dtype and device (checked)."""
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
    return t


def as_feature_pair(qf, gf, device: torch.device, metric: str):
    """Query and gallery features for ``evaluate``: (qf, q_sq, gf, g_sq), float32.

    Features whose scale float32 cannot hold (e.g. float64 values around 1e-50, which
    cast to 0 and would make every distance tie) are rescaled by powers of two before
    the cast, computed in float64: for ``'euclidean'`` both sides by one factor (all
    distances scale alike), for ``'cosine'`` each such row by its own (cosine ignores
    a row's scale). Either way the ranking is the one exact arithmetic gives. Ordinary
    features are not touched (the check reads the squared norms computed anyway).

    Raises:
        ValueError: as :func:`as_features`; and, for ``'cosine'``, a feature that is
            all zeros (its cosine to anything is undefined), naming its row.
    """
    raw_q, raw_g = _as_tensor(qf, "qf"), _as_tensor(gf, "gf")
    q, q_sq = as_features(raw_q, "qf", device)
    g, g_sq = as_features(raw_g, "gf", device)
    if metric == "cosine":
        q, q_sq = _rescale_small_rows(raw_q, q, q_sq, "qf", "query")
        g, g_sq = _rescale_small_rows(raw_g, g, g_sq, "gf", "gallery")
    elif max(float(q_sq.max()), float(g_sq.max())) < TINY_SQUARED_NORM:
        top = max(float(raw_q.abs().max()), float(raw_g.abs().max()))
        if top > 0:  # all-zero features are exact as they are
            exponent = int(torch.frexp(torch.tensor(top, dtype=torch.float64)).exponent)
            q, q_sq = _scaled(raw_q, -exponent, device, "qf")
            g, g_sq = _scaled(raw_g, -exponent, device, "gf")
    return q, q_sq, g, g_sq


def _scaled(raw: Tensor, exponent, device: torch.device, name: str) -> tuple[Tensor, Tensor]:
    """``raw * 2**exponent`` computed in float64, then float32 on ``device``; its norms."""
    exp = torch.as_tensor(exponent, dtype=torch.float64, device=raw.device)
    t = torch.ldexp(raw.to(torch.float64), exp).to(device=device, dtype=torch.float32)
    return t.contiguous(), finite_squared_norms(t.contiguous(), name)


def _rescale_small_rows(raw: Tensor, t: Tensor, sq: Tensor, name: str, what: str):
    """Cosine: rows too small for float32 rescaled each by its own power of two; an
    all-zero row refused (one line naming it)."""
    small = (sq < TINY_SQUARED_NORM).nonzero().flatten()
    if not small.numel():
        return t, sq
    rows = small.to(raw.device)
    top = raw[rows].to(torch.float64).abs().amax(dim=1)
    zero = (top == 0).nonzero().flatten()
    if zero.numel():
        r = int(rows[zero[0]])
        raise ValueError(
            f"{name} row {r} ({what} {r}) is all zeros: its cosine distance to anything is "
            "undefined; drop it or use metric='euclidean'"
        )
    exponent = -torch.frexp(top).exponent.to(torch.float64)[:, None]
    fixed, fixed_sq = _scaled(raw[rows], exponent, t.device, name)
    t, sq = t.clone(), sq.clone()  # never write into the caller's array
    t[small], sq[small] = fixed, fixed_sq
    return t, sq


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
