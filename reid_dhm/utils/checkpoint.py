"""Training checkpoints: self-describing, atomic, and loadable with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and resume: the registry name, class
count and constructor arguments of the model, its state dict, the resolved config,
the number of finished epochs, optimizer and scheduler state, and metrics/history.
Only tensors and plain Python values are stored, so ``torch.load(path,
weights_only=True)`` (the torch >= 2.6 default) reads it without unpickling code.

Reading and the on-disk format live here; writing a model's checkpoint and rebuilding a
model from one need the model classes, so they live in :mod:`reid_dhm.models.checkpoint`
(helpers never import models).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .torch_io import read_torch_file, strip_wrapper_prefixes

FORMAT = "reid_dhm.checkpoint/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside (Distributed)DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def to_plain(obj: Any) -> Any:
    """Tensors and plain Python values only (numpy scalars/arrays and tuples converted)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return (
            type(obj)((k, to_plain(v)) for k, v in obj.items())
            if isinstance(obj, dict)
            else {k: to_plain(v) for k, v in obj.items()}
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def previous_checkpoint_path(path: str | os.PathLike) -> Path:
    """``checkpoint.pth`` -> ``checkpoint.prev.pth`` (see ``save_checkpoint(keep_previous)``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; clear one-line errors for bad files.

    Also reads torchreid checkpoints (numpy scalars are allowed explicitly) and bare
    state dicts (returned as ``{'state_dict': ...}``). ``module.`` / ``_orig_mod.``
    prefixes of DDP-wrapped or compiled models are stripped from the state dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when it is damaged, unsafe (holds Python
            objects other than tensors and plain values) or holds no state dict.
    """
    path = Path(path)
    obj = read_torch_file(path, map_location, what="checkpoint")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} is not a checkpoint (it holds a {type(obj).__name__})")
    if "state_dict" not in obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"state_dict": obj}
    if "state_dict" not in obj:
        raise ValueError(f"{path} holds no 'state_dict'")
    obj = dict(obj)
    if not isinstance(obj["state_dict"], Mapping):
        kind = type(obj["state_dict"]).__name__
        raise ValueError(f"{path}: its 'state_dict' is a {kind}, not a dict of tensors")
    obj["state_dict"] = strip_wrapper_prefixes(obj["state_dict"])
    obj["path"] = str(path)
    return obj
