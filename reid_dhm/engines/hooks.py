"""The pieces of a training run around the loop, as :class:`~reid_dhm.engines.trainer.HookBase`
hooks: staged freezing, the gradient monitor, stop signals, console progress,
TensorBoard and checkpoints. ``standard_hooks`` puts them together in the order a run
needs (each hook reads what the earlier ones added to the epoch record).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..models.checkpoint import save_checkpoint
from ..utils.rng import rng_state
from . import distributed as dist
from .amp import autocast
from .console import RunClock, epoch_line, progress_line
from .freezing import set_backbone_frozen
from .grad_monitor import PREFIX as MONITOR_PREFIX
from .grad_monitor import GradientMonitor
from .guards import TrainingInterrupted
from .trainer import HookBase

CHECKPOINT = "checkpoint.pth"
BEST_CHECKPOINT = "best.pth"


class FreezeHook(HookBase):
    """Staged freezing: only new layers train during the first ``fixbase_epoch`` epochs
    (pretrained stages get no gradient and keep their BN statistics)."""

    def __init__(self, fixbase_epoch: int):
        self.fixbase_epoch = int(fixbase_epoch)

    def before_epoch(self) -> None:
        t = self.trainer
        frozen = set_backbone_frozen(t.model, t.epoch < self.fixbase_epoch)
        t.record["frozen"] = bool(frozen)


class StopHook(HookBase):
    """Stop between iterations when ``should_stop()`` returns a signal number (the run
    layer's SIGINT / SIGTERM handler); every process stops after the same iteration.

    One process looks after every iteration (a host flag: free). Several processes must
    agree, which takes a collective and a host read (a GPU sync), so they do so every
    ``every`` iterations (the print interval: the loop reads the device then anyway).
    """

    def __init__(self, should_stop: Callable[[], int | None], every: int = 1):
        self.should_stop, self.every = should_stop, max(int(every), 1)

    def after_step(self) -> None:
        signum = self.should_stop()
        if dist.world_size() > 1:
            if (self.trainer.step + 1) % self.every:
                return
            signum = int(dist.all_reduce_sum(torch.tensor([float(signum or 0)]))[0]) or None
        if signum:
            t = self.trainer
            raise TrainingInterrupted(signum, t.epoch + 1, t.step + 1)


class TensorBoardHook(HookBase):
    """TensorBoard events in ``log_dir``: running loss terms every ``every`` iterations
    (``Train/``), the epoch record (``Epoch/``) and evaluations (``Test/``)."""

    def __init__(self, log_dir: str | Path, every: int):
        self.log_dir, self.every, self.writer = str(log_dir), int(every), None

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=self.log_dir)

    def iteration(self) -> int:
        t = self.trainer
        return t.epoch * t.num_batches + t.step + 1

    def add(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def after_step(self) -> None:
        t = self.trainer
        if self.every > 0 and (t.step + 1) % self.every == 0:
            for key, value in t.running().items():
                self.add(f"Train/{key}", value, self.iteration())
            self.add("Train/lr", t.lr(), self.iteration())

    def after_epoch(self) -> None:
        self._numbers("Epoch", self.trainer.record)

    def after_evaluation(self, result: Any) -> None:
        fields = {k[5:]: v for k, v in self.trainer.last_fields.items()}
        self._numbers("Test", fields)

    def _numbers(self, group: str, values: Mapping) -> None:
        epoch = self.trainer.epoch + 1
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.add(f"{group}/{key}", value, epoch)
        if self.writer is not None:
            self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MonitorHook(HookBase):
    """Every ``every`` iterations, how the branches' gradients on the shared stem agree
    (:class:`GradientMonitor`); epoch means join the record, values go to TensorBoard."""

    def __init__(self, every: int, tensorboard: TensorBoardHook | None = None):
        self.every, self.tensorboard, self.monitor = int(every), tensorboard, None

    def before_train(self) -> None:
        t = self.trainer
        self.monitor = GradientMonitor(t.model, t.criterion, self.every)

    def before_step(self, images, targets) -> None:
        t = self.trainer
        if not self.monitor.due(t.step):
            return
        values = self.monitor.measure(images, targets, t.active, autocast(t.amp, t.device))
        if self.tensorboard is not None:
            for key, value in values.items():
                step = self.tensorboard.iteration()
                self.tensorboard.add(f"Monitor/{key[len(MONITOR_PREFIX) :]}", value, step)

    def after_epoch(self) -> None:
        # Before the console, TensorBoard and checkpoint hooks read the record.
        self.trainer.record.update(self.monitor.epoch_means())


class ConsoleHook(HookBase):
    """Progress a person reads, over the whole run, and one line per epoch.

    On a terminal: one tqdm bar over every iteration the run trains (epochs x
    iterations), so its estimate is the time left for the whole run. Off a terminal (a
    log file, CI): a line every ``print_freq`` iterations with the time left for the
    whole run. Either way the loss is read from the device only every ``print_freq``
    iterations (no per-iteration host sync), and each epoch ends with one line of at most
    120 columns (:func:`~reid_dhm.engines.console.epoch_line`); each evaluation is
    printed as ``describe(result)`` renders it.

    Args:
        print_freq: iterations between reads of the loss (0: only at the epoch end).
        log: where lines go (default: stdout, above the bar, flushed).
        describe: ``result -> str`` (the run layer passes the viz renderer; None: quiet).
        digits: decimals of the loss terms on the epoch line.
        terminal: draw the bar (default: when stderr is a terminal).
    """

    def __init__(
        self,
        print_freq: int,
        log: Callable[[str], None] | None = None,
        describe: Callable[[Any], str | None] | None = None,
        digits: int = 3,
        terminal: bool | None = None,
    ):
        self.print_freq, self.digits, self.describe = int(print_freq), digits, describe
        self._log = log
        self.show = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        self.clock: RunClock | None = None

    def log(self, line: str) -> None:
        if self._log is not None:
            self._log(line)
        else:  # above the bar, which is redrawn below it
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def before_epoch(self) -> None:
        t = self.trainer
        if self.clock is None:  # the first epoch this run trains (a resumed run: not 1)
            self.clock = RunClock((t.max_epoch - t.epoch) * t.num_batches)
            if self.show:
                self.bar = tqdm(total=self.clock.total, unit="it", dynamic_ncols=True, leave=False)
        if self.bar is not None:
            self.bar.set_description(f"epoch {t.epoch + 1}/{t.max_epoch}", refresh=False)

    def after_step(self) -> None:
        t = self.trainer
        self.clock.tick()
        due = self.print_freq > 0 and (t.step + 1) % self.print_freq == 0
        if self.bar is not None:
            if due:  # reading the loss waits for the device: only every print_freq
                self.bar.set_postfix_str(f"loss {t.running()['loss']:.3f}", refresh=False)
            self.bar.update(1)
        elif due:
            loss, left = t.running()["loss"], self.clock.left()
            self.log(
                progress_line(
                    t.epoch + 1, t.max_epoch, t.step + 1, t.num_batches, loss, t.lr(), left
                )
            )

    def after_epoch(self) -> None:
        t = self.trainer
        last = t.epoch + 1 == t.max_epoch
        left = None if last or self.clock is None else self.clock.left()
        self.log(epoch_line(t.record, t.max_epoch, self.digits, left))

    def after_evaluation(self, result: Any) -> None:
        text = self.describe(result) if self.describe is not None else None
        if text:
            self.log(text)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CheckpointHook(HookBase):
    """``save_dir/checkpoint.pth`` after every epoch (the one before kept as
    ``checkpoint.prev.pth``) and again after an evaluation with its metrics;
    ``best.pth`` when the task says an evaluation is its best so far.

    The last epoch's checkpoint is written before its evaluation, so a failing final
    evaluation leaves a checkpoint that can be evaluated again.
    """

    def __init__(self, save_dir: str | Path, model_name: str, config: Mapping | None):
        self.save_dir, self.model_name = Path(save_dir), model_name
        self.config = dict(config) if config is not None else None
        self.written_epoch: int | None = None

    def before_train(self) -> None:
        t = self.trainer
        path = self.save_dir / CHECKPOINT
        if t.history and path.is_file():
            t.guard.checkpoint = f"{path} (epoch {t.history[-1]['epoch']})"
            # A resumed run whose checkpoint is that epoch: writing the same epoch again
            # (a finished run's evaluation) must not rotate it into checkpoint.prev.pth.
            self.written_epoch = t.history[-1]["epoch"]

    def after_epoch(self) -> None:
        t = self.trainer
        if t.epoch + 1 == t.max_epoch or not t.eval_due(t.epoch):
            self.save(CHECKPOINT)

    def after_evaluation(self, result: Any) -> None:
        t = self.trainer
        if not t.history or t.history[-1]["epoch"] != t.epoch + 1:
            return  # an evaluation without training (a finished run): nothing new to keep
        self.save(CHECKPOINT)
        if getattr(t.task, "is_best", lambda r: False)(result):
            self.save(BEST_CHECKPOINT)

    def save(self, name: str) -> Path:
        t = self.trainer
        done = t.history[-1]["epoch"]
        path = save_checkpoint(
            self.save_dir / name,
            t.model,
            self.model_name,
            done,
            config=self.config,
            optimizer=t.optimizer,
            scheduler=t.scheduler,
            loss=t.criterion.state_dict(),
            scaler=t.scaler.state_dict() if t.scaler is not None else None,
            history=t.history,
            rng=rng_state(),
            # The same epoch written again (with its metrics) replaces it: no rotation.
            keep_previous=name == CHECKPOINT and done != self.written_epoch,
            **t.task.checkpoint_extras(),
        )
        if name == CHECKPOINT:
            self.written_epoch = done
            t.guard.checkpoint = f"{path} (epoch {done})"
        return path


def standard_hooks(
    *,
    save_dir: str | Path | None,
    model_name: str,
    config: Mapping | None,
    is_main: bool,
    fixbase_epoch: int = 0,
    print_freq: int = 0,
    grad_monitor_every: int = 0,
    should_stop: Callable[[], int | None] | None = None,
    describe: Callable[[Any], str | None] | None = None,
    digits: int = 3,
    log: Callable[[str], None] | None = None,
    tensorboard: bool = True,
) -> list[HookBase]:
    """The hooks of a training run, in the order they must run.

    Every process freezes, monitors and stops alike; only the main process prints,
    logs and writes (``is_main``).
    """
    hooks: list[HookBase] = [FreezeHook(fixbase_epoch)]
    board = TensorBoardHook(save_dir, print_freq) if is_main and save_dir and tensorboard else None
    if grad_monitor_every:
        hooks.append(MonitorHook(grad_monitor_every, board))
    if should_stop is not None:
        hooks.append(StopHook(should_stop, every=print_freq))
    if is_main:
        hooks.append(ConsoleHook(print_freq, log=log, describe=describe, digits=digits))
        if board is not None:
            hooks.append(board)
        if save_dir is not None:
            hooks.append(CheckpointHook(save_dir, model_name, config))
    return hooks


__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "CheckpointHook",
    "ConsoleHook",
    "FreezeHook",
    "MonitorHook",
    "StopHook",
    "TensorBoardHook",
    "standard_hooks",
]
