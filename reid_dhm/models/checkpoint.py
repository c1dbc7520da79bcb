"""Writing a model's checkpoint and rebuilding the model from one.

The format and the reader are :mod:`reid_dhm.utils.checkpoint`'s; these two need the
model classes and the registry, so they live beside them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.checkpoint import (
    FORMAT,
    load_checkpoint,
    previous_checkpoint_path,
    to_plain,
    unwrap,
)
from ..utils.io import atomic_path, torch_size
from .dhm import AUX_PREFIX, DHMNet
from .registry import build_model, get_entry


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
    plain = to_plain(state)
    # torch reports a full disk without naming it: the size makes the message exact.
    with atomic_path(path, needed=lambda: torch_size(plain)) as tmp:
        torch.save(plain, tmp)
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint_path(path))
    return path


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
            f"{where} does not say which model it holds (not a reid_dhm training "
            "checkpoint: a deployed model file, or another tool's weights); pass the run's "
            "checkpoint.pth, or model_name=..."
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
        refuse_main_branch_only(model, state, where, name)
        raise ValueError(
            f"{where} does not fit model {name!r}: {_misfit(model, state, err)}"
        ) from None
    return model


class DeployedWeightsError(ValueError):
    """Weights of the main branch alone given where a model with aux branches is built."""


def refuse_main_branch_only(model: nn.Module, state: Mapping, where: str, name: str) -> None:
    """:class:`DeployedWeightsError` when ``state`` is ``model`` less its aux branches.

    Every key the weights lack is an auxiliary branch's and they have no other key:
    a deployed file (``deployed.pth``), which cannot be resumed or evaluated per branch.
    ``model`` may live on the ``meta`` device (only its keys are read).
    """
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing and not unexpected and all(k.startswith(AUX_PREFIX) for k in missing):
        raise DeployedWeightsError(
            f"{where} holds the main branch's weights only (a deployed model file, like a "
            f"run's deployed.pth), not the auxiliary branches of {name!r}: pass the run's "
            "training checkpoint (checkpoint.pth, or the run folder)"
        )


def _misfit(model: nn.Module, state: Mapping, err: RuntimeError) -> str:
    """The first key that does not fit: missing, unexpected, or of another shape."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        return f"missing key {missing[0]!r} ({len(missing)} missing in all)"
    if unexpected:
        return f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all)"
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if "size mismatch" in line), lines[0])


__all__ = [
    "DeployedWeightsError",
    "model_from_checkpoint",
    "refuse_main_branch_only",
    "save_checkpoint",
]
