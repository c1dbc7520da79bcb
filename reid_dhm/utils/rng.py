"""Every random-number state that decides the rest of a run, saved and restored.

Checkpoints carry it (``rng_state()``), a resumed run restores it
(``restore_rng_state``), so that the epochs after a resume draw exactly what the
uninterrupted run drew. Stored as plain values and tensors (``weights_only`` safe).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch


def rng_state() -> dict:
    """Python's, numpy's and torch's (CPU and every CUDA device) global RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_rng_state(state: Mapping | None) -> bool:
    """Restore what ``rng_state`` saved (after a checkpoint round trip); False if none."""
    if not state:
        return False
    random.setstate(_tuple(state["python"]))
    np_state = dict(state["numpy"])
    inner = dict(np_state["state"])
    key = inner["key"]
    inner["key"] = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np_state["state"] = inner
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"])[: torch.cuda.device_count()])
    return True


__all__ = ["restore_rng_state", "rng_state"]
