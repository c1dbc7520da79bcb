"""Optimizers and per-epoch learning-rate schedules for both engines."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

# The names and ranges live in a torch-free module shared with the config schema;
# check_schedule is re-exported here for callers of the library.
from ..utils.checks import check_choice
from ..utils.options import (
    BETA,
    LR,
    MOMENTUM,
    OPTIMIZERS,
    SCHEDULERS,
    WEIGHT_DECAY,
    check_schedule,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "check_schedule",
    "set_base_lr",
]


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
    check_choice(name, OPTIMIZERS, "optimizer")
    LR.check(lr, "optim.lr")
    WEIGHT_DECAY.check(weight_decay, "optim.weight_decay")
    MOMENTUM.check(momentum, "optim.momentum")
    if len(betas) != 2:
        raise ValueError(f"optim.betas must be two numbers, got {list(betas)!r}")
    for beta in betas:
        BETA.check(beta, "optim.betas")
    params = [p for p in model.parameters()]
    if name in ("amsgrad", "adam"):
        return torch.optim.Adam(
            params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, amsgrad=name == "amsgrad"
        )
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
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
