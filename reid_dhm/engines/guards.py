"""What stops a training run early, and how it says so: non-finite losses, signals.

* ``NonFiniteGuard``: the loss of an iteration is NaN or infinite. ``'stop'`` raises
  ``TrainingDiverged`` naming the epoch and iteration (the checkpoint on disk, written
  at the last epoch end, stays as it was); ``'skip'`` drops the batch (no optimizer
  step) and stops only after ``max_skips`` such batches in a row.
* ``TrainingInterrupted``: raised by an engine at an iteration boundary after the
  command line caught SIGINT / SIGTERM (``should_stop``), so the current iteration
  finishes and nothing is written half-way.
* ``EvaluationInterrupted``: the same during an evaluation, raised at once.
* ``EvaluationFailed``: training finished but the final evaluation raised; the command
  line then writes what it knows and names the command that finishes the job.
"""

from __future__ import annotations

import math
import signal


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite (a ValueError: the usual fix is a setting)."""


class TrainingInterrupted(Exception):
    """A stop signal arrived; raised between iterations.

    Attributes:
        signum: the signal (``signal.SIGINT``, ``signal.SIGTERM``).
        epoch: 1-based epoch that was running; iteration: 1-based iterations it finished.
    """

    evaluating = False  # True for a stop during an evaluation (EvaluationInterrupted)

    def __init__(self, signum: int, epoch: int, iteration: int):
        self.signum, self.epoch, self.iteration = int(signum), int(epoch), int(iteration)
        super().__init__(
            f"interrupted by {signal.Signals(self.signum).name} in epoch {epoch} after "
            f"iteration {iteration}"
        )


class EvaluationInterrupted(TrainingInterrupted):
    """A stop signal arrived during an evaluation, which stops at once (it writes nothing,
    so there is nothing to finish). ``evaluating`` tells the run layer's message apart."""

    evaluating = True

    def __init__(self, signum: int):
        super().__init__(signum, 0, 0)
        self.args = (f"interrupted by {signal.Signals(self.signum).name} during an evaluation",)


class EvaluationFailed(Exception):
    """Training completed, the final evaluation did not; ``__cause__`` holds why."""

    def __init__(self, epochs: int, cause: BaseException):
        self.epochs = epochs
        self.cause = cause
        super().__init__(f"training finished ({epochs} epochs) but the final evaluation failed")


NONFINITE_POLICIES = ("stop", "skip")


def snapshot_buffers(module) -> list:
    """Copies of a module's buffers (BatchNorm statistics), for :func:`restore_buffers`."""
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module, saved: list) -> None:
    """Put back what ``snapshot_buffers`` copied (undoing a forward pass's BN updates)."""
    import torch

    with torch.no_grad():
        for buf, old in zip(module.buffers(), saved):
            buf.copy_(old)


def agreed_loss(value: float) -> float:
    """The loss value every process acts on: NaN on all ranks if it is not finite on one."""
    from . import distributed as dist

    if dist.world_size() == 1:
        return value
    import torch

    bad = dist.all_reduce_sum(torch.tensor([0.0 if math.isfinite(value) else 1.0]))
    return float("nan") if float(bad[0]) else value


class NonFiniteGuard:
    """Decides what happens to an iteration whose loss is not finite.

    Args:
        policy: ``'stop'`` or ``'skip'``.
        max_skips: with ``'skip'``, stop after this many non-finite batches in a row.
        checkpoint: how messages name the last good checkpoint (e.g. its path and epoch).
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10, checkpoint: str | None = None):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"unknown nonfinite policy {policy!r}; valid ones are {list(NONFINITE_POLICIES)}"
            )
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_skips must be an integer >= 1, got {max_skips!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.checkpoint = checkpoint
        self.in_a_row = 0
        self.skipped = 0  # in the current epoch (reset by ``new_epoch``)

    def new_epoch(self) -> None:
        self.skipped = 0

    def _fail(self, value: float, epoch: int, iteration: int, lr: float, why: str) -> None:
        kept = (
            f"; the last good checkpoint, {self.checkpoint}, is untouched"
            if self.checkpoint
            else ""
        )
        raise TrainingDiverged(
            f"training diverged: the loss is {value} in epoch {epoch}, iteration {iteration} "
            f"(lr {lr:.3g}){why}{kept}; lower the learning rate, add warm-up epochs "
            "(scheduler.warmup_epochs), or skip such batches with train.nonfinite=skip"
        )

    def allow_step(self, value: float, epoch: int, iteration: int, lr: float) -> bool:
        """True: apply this iteration's update. False: skip it. Raises to stop.

        Args:
            value: the iteration's loss (a Python float); epoch, iteration: 1-based.
        """
        if math.isfinite(value):
            self.in_a_row = 0
            return True
        if self.policy == "stop":
            self._fail(value, epoch, iteration, lr, "")
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.max_skips:
            self._fail(
                value, epoch, iteration, lr,
                f", {self.in_a_row} non-finite batches in a row "
                f"(train.nonfinite_max_skips={self.max_skips})",
            )  # fmt: skip
        return False


__all__ = [
    "NONFINITE_POLICIES",
    "agreed_loss",
    "restore_buffers",
    "snapshot_buffers",
    "EvaluationFailed",
    "EvaluationInterrupted",
    "NonFiniteGuard",
    "TrainingDiverged",
    "TrainingInterrupted",
]
