"""Optimizers and per-epoch learning-rate schedules for both engines."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

OPTIMIZERS = ("amsgrad", "adam", "sgd")
SCHEDULERS = ("multi_step", "step", "cosine", "constant")


def build_optimizer(
    model: nn.Module,
    name: str = "amsgrad",
    lr: float = 3e-4,
    weight_decay: float = 5e-4,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """AMSGrad (the paper's re-ID optimizer), Adam or SGD over all model parameters.

    Frozen parameters (staged freezing) stay in the optimizer: they get no gradient
    while frozen, so neither the update nor weight decay touches them.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers are {list(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"optim.lr must be > 0, got {lr!r}")
    params = [p for p in model.parameters()]
    if name in ("amsgrad", "adam"):
        return torch.optim.Adam(
            params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, amsgrad=name == "amsgrad"
        )
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def check_schedule(
    name: str = "multi_step",
    milestones: Sequence[int] = (20, 40),
    gamma: float = 0.1,
    step_size: int = 30,
    max_epoch: int = 60,
    warmup_epochs: int = 0,
    warmup_start: float | None = None,
) -> None:
    """Validate :func:`build_scheduler`'s arguments; errors name the ``scheduler.*`` key.

    Cheap and torch-free in effect, so tools call it right after reading the config,
    before any data is loaded.
    """
    if name not in SCHEDULERS:
        raise ValueError(
            f"unknown scheduler.name {name!r}; valid schedulers are {list(SCHEDULERS)}"
        )
    if name == "step" and step_size < 1:
        raise ValueError(f"scheduler.step_size must be >= 1, got {step_size!r}")
    if name in ("multi_step", "step") and not gamma > 0:
        raise ValueError(f"scheduler.gamma must be > 0 (the lr is multiplied by it), got {gamma!r}")
    if name == "multi_step" and any(int(m) != m or m < 1 for m in milestones):
        raise ValueError(f"scheduler.milestones must be epochs >= 1, got {list(milestones)!r}")
    if warmup_epochs < 0:
        raise ValueError(f"scheduler.warmup_epochs must be >= 0, got {warmup_epochs!r}")
    if warmup_start is not None and not 0 < warmup_start <= 1:
        raise ValueError(f"scheduler.warmup_start must be in (0, 1], got {warmup_start!r}")
    if warmup_epochs and warmup_epochs >= max_epoch >= 1:
        raise ValueError(
            f"scheduler.warmup_epochs={warmup_epochs} must be < train.max_epoch={max_epoch}: "
            "the warm-up would end after training and never reach the peak lr"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "multi_step",
    milestones: Sequence[int] = (20, 40),
    gamma: float = 0.1,
    step_size: int = 30,
    max_epoch: int = 60,
    warmup_epochs: int = 0,
    warmup_start: float | None = None,
    start_epoch: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule stepped once per epoch (never per iteration; see DESIGN 3).

    ``multi_step``: x gamma at each milestone epoch; ``step``: x gamma every
    ``step_size`` epochs; ``cosine``: cosine decay to 0 over ``max_epoch``; optional
    linear warm-up over the first ``warmup_epochs`` epochs. The lr of 0-based epoch e
    is ``lr * factor(e)``; ``scheduler.step()`` is called once after each epoch.

    Args:
        start_epoch: position the schedule at this epoch (resuming from weights
            without a saved scheduler state); a saved state is restored with
            ``load_state_dict`` instead.
        warmup_start: the lr factor of the first warm-up epoch; it rises linearly to 1
            at epoch ``warmup_epochs`` (BoT: 0.01). None: ``1 / (warmup_epochs + 1)``.
    """
    check_schedule(name, milestones, gamma, step_size, max_epoch, warmup_epochs, warmup_start)
    marks = sorted(int(m) for m in milestones)
    start = 1.0 / (warmup_epochs + 1) if warmup_start is None else float(warmup_start)

    def factor(epoch: int) -> float:
        if warmup_epochs and epoch < warmup_epochs:
            # Linear from `start` (epoch 0) towards 1 (epoch warmup_epochs).
            return start + (1.0 - start) * epoch / warmup_epochs
        if name == "multi_step":
            return gamma ** sum(epoch >= m for m in marks)
        if name == "step":
            return gamma ** (epoch // step_size)
        if name == "cosine":
            span = max(1, max_epoch - warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(epoch - warmup_epochs, span) / span))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if start_epoch:
        scheduler.last_epoch = start_epoch - 1
        with warnings.catch_warnings():
            # step() before any optimizer.step() warns; here it only moves the position.
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return scheduler


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """Make ``lr`` the schedule's peak lr, also after a resumed scheduler state.

    A restored ``LambdaLR`` state carries the old run's base lrs, and the optimizer
    state its last lr: without this, ``optim.lr=...`` on ``--resume`` would be silently
    ignored. The current epoch's lr becomes ``lr * factor(last_epoch)``.
    """
    if scheduler is None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        return
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
