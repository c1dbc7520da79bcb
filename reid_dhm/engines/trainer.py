"""One training loop for every task, with hooks.

The loop (``Trainer``) knows the DHM objective and nothing about a task's data or
metrics: per epoch it draws the active branches (one rule, :meth:`Trainer.branches_for`),
runs one optimizer step per batch on :class:`~reid_dhm.losses.DHMLoss`, steps the
schedule once, averages the loss terms over every process and, when due, asks the task
to evaluate. Everything else a run does around it (staged freezing, the gradient
monitor, stop signals, console progress, TensorBoard, checkpoints) is a hook: a small
object with ``before_*`` / ``after_*`` methods that reads and extends the trainer's state
(the idea of fast-reid's ``TrainerBase`` / ``HookBase``).

A task supplies (see :class:`Task`): the training loader, how to unpack a batch, its
evaluation (called on every process, collectives inside), the history fields of an
evaluation, and its results. ``reid_dhm.engines.reid_task`` and
``reid_dhm.engines.classification`` are the two tasks.

Loss terms and accuracies stay on the device during an epoch (sums weighted by batch
size); the host reads them, all in one transfer, only where something is printed or
logged (every ``train.print_freq`` iterations) and at the epoch end, so the CPU queues
the next iterations while the device works (``tests/test_sync_count.py`` counts the
reads). A NaN / inf loss is caught by the
:class:`~reid_dhm.engines.guards.NonFiniteGuard`: ``'stop'`` (the default) keeps the
first bad iteration on the device and raises, naming it, at the next read; nothing is
written in between (checkpoints are written after the epoch end's check), so the stop
is exact without a per-iteration read. ``'skip'`` must decide before every optimizer
step and reads the loss each iteration: undoing a step on the device instead would
mean a copy of every parameter and optimizer state each iteration, and torch keeps the
optimizers' step counters on the host, where a device flag cannot reach them
(docs/RELIABILITY.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..losses import BranchSampler, DHMLoss
from ..models import BranchOutputs
from ..utils.checkpoint import unwrap
from . import distributed as dist
from .amp import autocast, backward_step, check_amp
from .guards import (
    EvaluationFailed,
    NonFiniteGuard,
    TrainingDiverged,
    TrainingInterrupted,
    agreed_loss,
    restore_buffers,
    snapshot_buffers,
)


class Task(Protocol):
    """What a task gives the loop.

    Attributes:
        train_loader: yields batches for :meth:`unpack`; its sampler gets ``set_epoch``.
    """

    train_loader: Iterable

    def unpack(self, batch) -> tuple[Tensor, Tensor]:
        """A batch -> (images (B, 3, H, W), targets (B,)), on any device."""

    def evaluate(self, model: nn.Module) -> Any:
        """Evaluate ``model`` (every process calls it); the result, or None off rank 0."""

    def test_record(self, result: Any, epoch: int) -> dict[str, float]:
        """History fields (``test/...``) of the evaluation after ``epoch`` (1-based);
        called once per evaluation, on every process."""

    def results(self, trainer: Trainer) -> dict:
        """What ``results.json`` holds besides the run's identity."""


class HookBase:
    """A piece of a run around the loop; every method is optional.

    ``self.trainer`` is set before ``before_train``. Hooks run in list order.
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def before_step(self, images: Tensor, targets: Tensor) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_evaluation(self, result: Any) -> None:
        pass

    def after_train(self) -> None:
        pass


class Trainer:
    """Train a DHM model on a task.

    Args:
        task: the :class:`Task` (data, evaluation, results).
        model: a reid_dhm model on its device, or the same wrapped by DDP.
        criterion: the :class:`DHMLoss`.
        optimizer, scheduler: the scheduler is stepped once per epoch (DESIGN 3).
        max_epoch: total epochs of the schedule.
        branch_sampler: draws the active branches each epoch; None = every branch.
        amp: ``'none'``, ``'bf16'`` or ``'fp16'`` (CUDA, with a GradScaler).
        eval_freq: evaluate every this many epochs; always after the last one.
        guard: what a non-finite loss does (default: stop).
        hooks: :class:`HookBase` objects, run in order.
        history: per-epoch records of earlier epochs (resuming).
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        criterion: DHMLoss,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        max_epoch: int,
        branch_sampler: BranchSampler | None = None,
        amp: str = "none",
        eval_freq: int = -1,
        guard: NonFiniteGuard | None = None,
        hooks: Sequence[HookBase] = (),
        history: Sequence[dict] = (),
    ):
        self.task, self.model, self.bare = task, model, unwrap(model)
        self.device = next(self.bare.parameters()).device
        self.criterion, self.optimizer, self.scheduler = criterion, optimizer, scheduler
        self.max_epoch, self.eval_freq = int(max_epoch), int(eval_freq)
        self.branch_sampler = branch_sampler
        self.amp = check_amp(amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.guard = guard or NonFiniteGuard()
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self
        self.history = [dict(h) for h in history]
        self.epoch = self.step = 0
        self.active: tuple[str, ...] = tuple(self.bare.branch_names)
        self.record: dict = {}
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.last_result: Any = None
        self.last_fields: dict[str, float] = {}
        self.num_batches = 0
        self._running_key: tuple | None = None  # (epoch, step, count) of ``_running``
        self._running: dict[str, float] = {}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------- state
    def branches_for(self, epoch: int) -> tuple[str, ...]:
        """The branches computed in ``epoch``: the sampler's draw, less those without a
        loss term (baseline: ``main`` alone). The one rule, for every task."""
        names = self.bare.branch_names
        drawn = self.branch_sampler.sample(epoch) if self.branch_sampler is not None else names
        return tuple(self.criterion.branches_used(names, drawn))

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def running(self) -> dict[str, float]:
        """Means of the loss terms so far this epoch, this process.

        One host read (every term and the non-finite flag in one transfer) per
        iteration at most, however many hooks ask; hooks ask every ``print_freq``
        iterations. Raises ``TrainingDiverged`` ('stop') if a loss so far was not finite.
        """
        key = (self.epoch, self.step, self.count)
        if self._running_key != key:
            names = [k for k in self.sums if not k.startswith("acc/")]
            flat = [self.sums[k].float() for k in names] + [self.first_bad.float()]
            *values, bad = torch.stack(flat).tolist()
            self.raise_if_bad(first_bad=int(bad))
            n = max(self.count, 1)
            self._running_key, self._running = key, {k: v / n for k, v in zip(names, values)}
        return self._running

    def state_dict(self) -> dict:
        """Optimizer, scheduler, scaler and loss state (checkpoints add the rest)."""
        return {
            "loss": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave (missing parts are left as they are)."""
        if state.get("loss"):  # the adaptive KL schedule's running accuracies
            self.criterion.load_state_dict(state["loss"])
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def _call(self, what: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, what)(*args)

    # ------------------------------------------------------------------ loop
    def train(self, start_epoch: int = 0) -> None:
        """Epochs ``start_epoch .. max_epoch - 1``, evaluating as scheduled.

        With ``start_epoch >= max_epoch`` (a finished run) the model is only evaluated.
        A failure of the last evaluation raises ``EvaluationFailed`` (the epoch's
        checkpoint is written by then).
        """
        self._call("before_train")
        try:
            for epoch in range(start_epoch, self.max_epoch):
                self.run_epoch(epoch)
            if start_epoch >= self.max_epoch:
                self.epoch = max(start_epoch - 1, 0)
                self.evaluate(final=True)
        finally:
            self._call("after_train")

    def run_epoch(self, epoch: int) -> dict:
        """:meth:`train_epoch`, then the task's evaluation when due; returns the record."""
        self.train_epoch(epoch)
        if self.eval_due(epoch):
            self.evaluate(final=epoch + 1 == self.max_epoch)
        return self.record

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the task's loader (0-based ``epoch``); returns its record.

        The record (also appended to ``history``) holds ``epoch``, ``lr``, ``frozen``,
        every loss term (``loss``, ``ce/<b>``, ``kl/<t>-><s>``, ``tri/<b>``) and training
        accuracy (``acc/<b>``, %) averaged over all processes' samples, ``kl_weight``,
        ``active`` and ``seconds``.
        """
        start = time.time()
        self._begin_epoch(epoch)
        for step, batch in enumerate(self.task.train_loader):
            self.step = step
            images, targets = self.task.unpack(batch)
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            self._call("before_step", images, targets)
            self.train_step(images, targets)
            self._call("after_step")
        self.raise_if_bad(every_rank=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self._finish_record(start)
        self.history.append(self.record)
        self._call("after_epoch")
        return self.record

    def eval_due(self, epoch: int) -> bool:
        """Whether the task evaluates after ``epoch`` (0-based): every ``eval_freq``
        epochs and always after the last one."""
        last = epoch + 1 == self.max_epoch
        return last or (self.eval_freq > 0 and (epoch + 1) % self.eval_freq == 0)

    def _begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.active = self.branches_for(epoch)
        self.bare.set_active_branches(self.active)
        self.criterion.set_epoch(epoch)
        sampler = getattr(self.task.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.model.train()
        self.record = {"epoch": epoch + 1, "lr": self.lr()}
        self.sums, self.count = {}, 0
        self.num_batches = len(self.task.train_loader)
        # 1-based iteration of the first non-finite loss, -1 while there is none.
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.guard.new_epoch()
        self._call("before_epoch")

    def forward_loss(self, images: Tensor, targets: Tensor) -> tuple[BranchOutputs, dict]:
        """Forward the active branches and compute every loss term (float32)."""
        with autocast(self.amp, self.device):
            output = self.model(images)
        # The loss in float32 whatever the autocast dtype (log-softmax, KL, triplet).
        output = BranchOutputs(
            logits=OrderedDict((b, z.float()) for b, z in output.logits.items()),
            features=OrderedDict((b, f.float()) for b, f in output.features.items()),
        )
        return output, self.criterion(output, targets, active=self.active)

    def train_step(self, images: Tensor, targets: Tensor) -> bool:
        """One optimizer step; False when a non-finite batch was skipped."""
        skip = self.guard.policy == "skip"
        # Skipping a batch must also undo what its forward pass did to BN statistics.
        saved = snapshot_buffers(self.bare) if skip else None
        output, losses = self.forward_loss(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        if skip:  # every rank takes the same decision
            value = agreed_loss(float(losses["loss"].detach()))
            if not self.guard.allow_step(value, self.epoch + 1, self.step + 1, self.lr()):
                restore_buffers(self.bare, saved)
                return False
        else:
            finite = torch.isfinite(losses["loss"].detach())
            self.first_bad = torch.where(
                (self.first_bad < 0) & ~finite, self.step + 1, self.first_bad
            )
        backward_step(losses["loss"], self.optimizer, self.scaler)
        n = targets.shape[0]
        self.count += n
        # Sums stay on the device (no per-iteration host sync); ranks add them up later.
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float() * n
        for b, z in output.logits.items():
            hit = (z.detach().argmax(1) == targets).sum()
            self.sums[f"acc/{b}"] = self.sums.get(f"acc/{b}", 0) + hit
        return True

    def raise_if_bad(self, every_rank: bool = False, first_bad: int | None = None) -> None:
        """'stop' policy: raise if an iteration so far had a non-finite loss.

        Mid-epoch only single-process runs look: under DDP one rank must not leave while
        the others wait in a collective; at the epoch end every rank looks.

        Args:
            first_bad: ``self.first_bad`` already read by the caller (else it is read here).
        """
        if self.guard.policy != "stop" or (not every_rank and dist.world_size() > 1):
            return
        bad = int(self.first_bad) if first_bad is None else first_bad
        if bad > 0:
            self.guard.allow_step(float("nan"), self.epoch + 1, bad, self.record["lr"])

    def _finish_record(self, start: float) -> None:
        totals = dist.all_reduce_dict({**self.sums, "_count": torch.tensor(float(self.count))})
        seen = totals.pop("_count")
        if seen == 0:
            raise ValueError("the training loader yielded no batch")
        record = self.record
        for key in self.sums:  # the loss's own order: loss, ce/..., kl/..., acc/...
            record[key] = (100.0 if key.startswith("acc/") else 1.0) * totals[key] / seen
        if not math.isfinite(record["loss"]):  # another rank's batches (its own check raised)
            self.guard.allow_step(record["loss"], self.epoch + 1, self.num_batches, record["lr"])
        if self.guard.skipped:
            record["skipped_batches"] = self.guard.skipped
        if self.criterion.mode == "dhm":
            record["kl_weight"] = self.criterion.current_kl_weight
            record.update(self.criterion.trust_record())
        record["active"] = list(self.active)
        record["seconds"] = time.time() - start

    # ------------------------------------------------------------ evaluation
    def evaluate(self, final: bool = False) -> Any:
        """Ask the task to evaluate; its fields join this epoch's record.

        A failure of the final evaluation after training becomes ``EvaluationFailed``
        (what training produced is on disk by then and can be evaluated again).
        """
        try:
            result = self.task.evaluate(self.model)
            fields = self.task.test_record(result, self.epoch + 1)
        except (TrainingDiverged, TrainingInterrupted):
            raise
        except Exception as err:
            done = self.history[-1]["epoch"] if self.history else 0
            if final and done:
                raise EvaluationFailed(done, err) from err
            raise
        self.last_result, self.last_fields = result, fields
        if self.history and self.history[-1]["epoch"] == self.epoch + 1:
            self.history[-1].update(fields)
        self._call("after_evaluation", result)
        return result


__all__ = ["HookBase", "Task", "Trainer"]
