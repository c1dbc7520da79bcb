"""Training checkpoints: self-describing, atomic, and loadable with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and resume: the registry name, class
count and constructor arguments of the model, its state dict, the resolved config,
the number of finished epochs, optimizer and scheduler state, and metrics/history.
Only tensors and plain Python values are stored, so ``torch.load(path,
weights_only=True)`` (the torch >= 2.6 default) reads it without unpickling code.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import DHMNet, build_model, get_entry
from .io import atomic_path
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


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    epoch: int,
    config: Mapping | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    keep_previous: bool = False,
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename over ``path``).

    Args:
        model: the (possibly DDP-wrapped) model; saved without ``module.`` prefixes.
        model_name: its registry name, so :func:`model_from_checkpoint` can rebuild it.
        epoch: finished epochs (``--resume`` continues with the next one).
        keep_previous: move the file being replaced to ``<stem>.prev<suffix>`` (only once
            the new one is completely written), so a damaged or lost newest checkpoint
            still leaves the one before it.
        **extra: more plain values, e.g. ``metrics=...``, ``history=...``.
    """
    bare = unwrap(model)
    if not isinstance(bare, DHMNet):
        raise TypeError(f"save_checkpoint expects a reid_dhm model, got {type(bare).__name__}")
    kwargs = {k: v for k, v in bare.init_kwargs.items() if k != "num_classes"}
    state = {
        "format": FORMAT,
        "model_name": model_name,
        "num_classes": bare.num_classes,
        "model_kwargs": kwargs,
        "branches": list(bare.branch_names),
        "state_dict": bare.state_dict(),
        "epoch": int(epoch),
        "config": dict(config) if config is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(to_plain(state), tmp)
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint_path(path))
    return path


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


def model_from_checkpoint(
    checkpoint: str | os.PathLike | Mapping,
    model_name: str | None = None,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> DHMNet:
    """Rebuild the model a checkpoint was trained with and load its weights (strict).

    For checkpoints written by other tools (torchreid's, bare state dicts) pass
    ``model_name`` (and ``num_classes`` if the classifier size cannot be inferred).
    """
    ckpt = load_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    where = ckpt.get("path", "the checkpoint")
    name = model_name or ckpt.get("model_name")
    if name is None:
        raise ValueError(
            f"{where} does not say which model it holds (not a reid_dhm checkpoint); "
            "pass model_name=..."
        )
    state = ckpt["state_dict"]
    if num_classes is None:
        num_classes = ckpt.get("num_classes")
    if num_classes is None and "classifier.weight" in state:
        num_classes = int(state["classifier.weight"].shape[0])
    if num_classes is None:
        raise ValueError(f"{where}: cannot tell the class count; pass num_classes=...")
    kwargs = dict(ckpt.get("model_kwargs") or {}) if name == ckpt.get("model_name") else {}
    # init_kwargs also hold what the registry entry fixes itself (e.g. the depth bound by
    # partial(DHMResNet, 50)); pass only what the entry's builder still accepts.
    accepted = inspect.signature(get_entry(name).builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    kwargs.update(model_kwargs)
    model = build_model(name, int(num_classes), **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{where} does not fit model {name!r}: {first}") from None
    return model
