"""The classification engine: DHM / deep supervision / baseline training on CIFAR, ImageNet...

A plain PyTorch loop with explicit arguments (it never reads configuration):

* one SGD step per batch on ``DHMLoss`` (the one place the objective is computed) over
  the branches the epoch's ``BranchSampler`` draw activates; the schedule is stepped
  once per epoch (DESIGN 3: never per iteration);
* optional mixed precision: ``amp='bf16'`` (autocast on CPU or GPU) or ``'fp16'``
  (CUDA only, with a ``GradScaler``); the loss is always computed in float32;
* top-1 / top-5 error of the main branch on the test set (every branch on request,
  paper Table 5); the best epoch by main top-1 is kept as ``best.pth`` beside
  ``checkpoint.pth`` (both written atomically every time);
* resume (optimizer, scheduler, scaler, history, best epoch), TensorBoard events,
  a progress bar on a terminal, ``training_curves.png`` and ``results.json``;
* any number of processes (``torchrun``): hand it a model wrapped by
  ``distributed.wrap_model`` and loaders built with ``distributed.train_sampler`` /
  ``distributed.eval_sampler``. Loss terms and accuracy counts are summed over
  ranks, evaluation runs on every rank over disjoint shards (nothing dropped or
  duplicated) and the counts are summed, so every rank sees the same metrics; rank 0
  alone prints and writes files.

The device is taken from the model's parameters; nothing here calls ``.cuda()``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..losses import BranchSampler, DHMLoss
from ..models import MAIN
from ..utils.checkpoint import save_checkpoint, unwrap
from ..utils.io import atomic_write_text
from ..utils.rng import rng_state
from . import distributed as dist
from .amp import AMP_MODES, autocast, backward_step, check_amp
from .console import epoch_terms, progress_line
from .freezing import set_backbone_frozen
from .grad_monitor import PREFIX as MONITOR_PREFIX
from .grad_monitor import GradientMonitor, monitor_history
from .guards import (
    NonFiniteGuard,
    TrainingDiverged,
    TrainingInterrupted,
    agreed_loss,
    restore_buffers,
    snapshot_buffers,
)
from .plots import plot_training_curves

CHECKPOINT = "checkpoint.pth"
BEST_CHECKPOINT = "best.pth"
TOPK = (1, 5)


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = TOPK) -> Tensor:
    """How many samples have their target among the k highest logits, for each k.

    Args:
        logits: (B, K) class scores.
        targets: (B,) class indices.
        ks: the k values; a k >= K counts every sample.

    Returns:
        (len(ks),) int64 counts on ``logits``' device.
    """
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (B, k_max), best first
    hits = top.eq(targets.view(-1, 1))  # (B, k_max): at most one True per row
    cum = hits.cumsum(1).clamp_max(1)  # (B, k_max): 1 from the target's rank on
    return torch.stack([cum[:, min(k, k_max) - 1].sum() for k in ks])


def topk_errors(logits: Tensor, targets: Tensor, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """Top-k error in percent of one batch or data set: ``{'top1_err': ..., 'top5_err': ...}``."""
    correct = topk_correct(logits, targets, ks).double()
    n = max(1, targets.numel())
    return {f"top{k}_err": 100.0 * (1.0 - float(c) / n) for k, c in zip(ks, correct)}


class ClassificationEngine:
    """Train and evaluate a DHM classifier.

    Args:
        model: a reid_dhm model on its device, or the same wrapped by
            ``distributed.wrap_model`` (DDP).
        criterion: the :class:`DHMLoss` (mode, direction, label smoothing, ...).
        optimizer, scheduler: from ``build_optimizer`` / ``build_scheduler`` (the
            scheduler is stepped once per epoch).
        train_loader: yields ``(images (B, 3, H, W), labels (B,))``; its sampler gets
            ``set_epoch(epoch)`` when it has one (``DistributedSampler``).
        test_loader: same item format; under DDP use ``distributed.eval_sampler``.
        max_epoch: total epochs of the schedule.
        branch_sampler: draws the active branches each epoch; None = every branch.
        amp: ``'none'``, ``'bf16'`` or ``'fp16'`` (CUDA only).
        per_branch: evaluate every branch, not only ``main`` (paper Table 5).
        eval_freq: evaluate every this many epochs (and always after the last one);
            <= 0: only after the last epoch. The best checkpoint is chosen among
            evaluated epochs.
        print_freq: off a terminal, print a progress line every this many iterations
            (<= 0: one line per epoch only); also the TensorBoard iteration-log period.
        fixbase_epoch: train only new layers (classifiers, aux branches) for this many
            epochs (staged freezing, for fine-tuning pretrained backbones).
        save_dir: where checkpoints, events, plots and ``results.json`` go (None:
            nothing is written).
        model_name: registry name, stored in checkpoints.
        config: resolved configuration, stored in checkpoints.
        run_info: plain values placed at the top of ``results.json`` (e.g. the dataset).
        is_main_process: the process that prints and writes (default: rank 0).
        tensorboard: write TensorBoard events into ``save_dir``.
        log: where text lines go (default ``print``).
        grad_monitor_every: every this many iterations of an epoch, measure how the
            branches' gradients on the shared stem agree (``GradientMonitor``); 0 = off.
        nonfinite, nonfinite_max_skips: what a NaN / inf loss does (``NonFiniteGuard``).
            ``'stop'`` keeps the loss on the device and looks at it where the engine
            reads the loss anyway (progress lines, the epoch end), so it costs no
            extra sync; ``'skip'`` must decide before every optimizer step, so it
            reads the loss every iteration.
        should_stop: called after every iteration; a signal number means stop now
            (``TrainingInterrupted``).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: DHMLoss,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        train_loader: Iterable | None = None,
        test_loader: Iterable | None = None,
        max_epoch: int = 1,
        branch_sampler: BranchSampler | None = None,
        amp: str = "none",
        per_branch: bool = False,
        eval_freq: int = 1,
        print_freq: int = 0,
        fixbase_epoch: int = 0,
        save_dir: str | Path | None = None,
        model_name: str = "model",
        config: Mapping | None = None,
        run_info: Mapping | None = None,
        is_main_process: bool | None = None,
        tensorboard: bool = True,
        log: Callable[[str], None] = print,
        grad_monitor_every: int = 0,
        nonfinite: str = "stop",
        nonfinite_max_skips: int = 10,
        should_stop: Callable[[], int | None] | None = None,
    ):
        self.model = model
        self.bare = unwrap(model)
        self.device = next(self.bare.parameters()).device
        self.amp = check_amp(amp, self.device)
        if max_epoch < 0:
            raise ValueError(f"max_epoch must be >= 0, got {max_epoch}")
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.max_epoch = int(max_epoch)
        self.branch_sampler = branch_sampler
        self.per_branch = bool(per_branch)
        self.eval_freq = int(eval_freq)
        self.print_freq = int(print_freq)
        self.fixbase_epoch = int(fixbase_epoch)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.model_name = model_name
        self.config = dict(config) if config is not None else None
        self.run_info = dict(run_info or {})
        self.is_main = dist.is_main_process() if is_main_process is None else bool(is_main_process)
        self.tensorboard = tensorboard
        self.log = log
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.monitor = (
            GradientMonitor(model, criterion, grad_monitor_every) if grad_monitor_every else None
        )
        self.guard = NonFiniteGuard(nonfinite, nonfinite_max_skips)
        self.should_stop = should_stop
        self.history: list[dict] = []
        self.best: dict | None = None  # {'epoch', 'top1_err', 'top5_err'} of main
        self.last_eval: dict | None = None
        self.results: dict = {}
        self.writer = None

    # ------------------------------------------------------------------ resume
    def load_state(self, checkpoint: Mapping) -> int:
        """Restore optimizer, scheduler, scaler, history and best epoch; returns epochs done.

        The model weights are the caller's job (``model_from_checkpoint``).
        """
        if checkpoint.get("optimizer"):
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scheduler") and self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = [dict(h) for h in checkpoint.get("history") or []]
        best = checkpoint.get("best")
        self.best = dict(best) if best else None
        self.last_eval = checkpoint.get("metrics") or None
        return int(checkpoint.get("epoch", 0))

    # ---------------------------------------------------------------- training
    def _branches_for(self, epoch: int) -> tuple[str, ...]:
        names = self.bare.branch_names
        drawn = self.branch_sampler.sample(epoch) if self.branch_sampler is not None else names
        # Only branches that get a loss term are computed (baseline: main alone).
        return tuple(self.criterion.branches_used(names, drawn))

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, epoch: int) -> dict:
        """One pass over ``train_loader``; returns the epoch record (averaged over ranks).

        Args:
            epoch: 0-based index (the record's ``epoch`` is ``epoch + 1``).

        Returns:
            ``{'epoch', 'lr', 'loss', 'ce/<b>', 'kl/<t>-><s>', 'acc/<b>' (train top-1 %),
            'active', 'frozen', 'seconds'}``.
        """
        if self.train_loader is None:
            raise ValueError("train_epoch needs a train_loader")
        start = time.time()
        active = self._branches_for(epoch)
        self.bare.set_active_branches(active)
        self.criterion.set_epoch(epoch)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.model.train()
        frozen = bool(self.fixbase_epoch) and bool(
            set_backbone_frozen(self.model, epoch < self.fixbase_epoch)
        )
        lr = self._lr()
        sums: dict[str, Tensor] = {}
        count = 0
        total = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        show = self.is_main and sys.stderr.isatty()
        bar = tqdm(
            self.train_loader,
            total=total,
            desc=f"epoch {epoch + 1}/{self.max_epoch}",
            disable=not show,
            leave=False,
        )
        self.guard.new_epoch()
        # 1-based iteration of the first non-finite loss, -1 while there is none; kept on
        # the device and read where the loss is read anyway ('stop' policy).
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        skip = self.guard.policy == "skip"
        for step, (images, targets) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.monitor is not None and self.monitor.due(step):
                monitored = self.monitor.measure(
                    images, targets, active, autocast(self.amp, self.device)
                )
                if self.writer is not None and self.is_main:
                    it = epoch * (total or 0) + step + 1
                    for key, value in monitored.items():
                        self.writer.add_scalar(f"Monitor/{key[len(MONITOR_PREFIX) :]}", value, it)
            saved = snapshot_buffers(self.bare) if skip else None
            with autocast(self.amp, self.device):
                output = self.model(images)
            # The loss in float32 whatever the autocast dtype (log-softmax, KL).
            logits = OrderedDict((b, z.float()) for b, z in output.logits.items())
            losses = self.criterion(logits, targets, active=active)
            self.optimizer.zero_grad(set_to_none=True)
            if skip:  # every rank takes the same decision
                value = agreed_loss(float(losses["loss"].detach()))
                if not self.guard.allow_step(value, epoch + 1, step + 1, lr):
                    restore_buffers(self.bare, saved)  # what the forward did to BN statistics
                    self._check_stop(epoch, step)
                    continue
            else:
                finite = torch.isfinite(losses["loss"].detach())
                first_bad = torch.where((first_bad < 0) & ~finite, step + 1, first_bad)
            backward_step(losses["loss"], self.optimizer, self.scaler)
            n = targets.shape[0]
            count += n
            # Sums stay on the device (no per-iteration host sync); ranks add them up later.
            for key, value in losses.items():
                sums[key] = sums.get(key, 0) + value.detach().float() * n
            for b, z in logits.items():
                hit = (z.detach().argmax(1) == targets).sum()
                sums[f"acc/{b}"] = sums.get(f"acc/{b}", 0) + hit
            if show and step % 10 == 0:  # reading the loss syncs with the device
                bar.set_postfix(loss=f"{float(sums['loss']) / count:.3f}")
                self._raise_if_bad(first_bad, epoch, lr)
            if self.print_freq > 0 and (step + 1) % self.print_freq == 0 and self.is_main:
                self._raise_if_bad(first_bad, epoch, lr)
                running = {k: float(v) / count for k, v in sums.items() if not k.startswith("acc")}
                if not show:
                    self.log(
                        progress_line(
                            epoch + 1, self.max_epoch, step + 1, total, running["loss"], lr
                        )
                    )
                if self.writer is not None:
                    it = epoch * (total or 0) + step + 1
                    for key, value in running.items():
                        self.writer.add_scalar(f"Train/{key}", value, it)
            self._check_stop(epoch, step)
        if not skip:
            self._raise_if_bad(first_bad, epoch, lr, every_rank=True)
        if self.scheduler is not None:
            self.scheduler.step()
        totals = dist.all_reduce_dict({**sums, "_count": torch.tensor(float(count))})
        seen = totals.pop("_count")
        if seen == 0:
            raise ValueError("the training loader yielded no batch")
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        for key in sums:  # the loss's own order: loss, ce/main, ce/aux1, ..., kl/..., acc/...
            record[key] = (100.0 if key.startswith("acc/") else 1.0) * totals[key] / seen
        if not math.isfinite(record["loss"]):  # another rank's batches (its own check raised)
            self.guard.allow_step(record["loss"], epoch + 1, total or 0, lr)
        if self.guard.skipped:
            record["skipped_batches"] = self.guard.skipped
        if self.criterion.mode == "dhm":
            record["kl_weight"] = self.criterion.current_kl_weight
        if self.monitor is not None:
            record.update(self.monitor.epoch_means())
        record["active"] = list(active)
        record["frozen"] = frozen
        record["seconds"] = time.time() - start
        return record

    def _raise_if_bad(self, first_bad: Tensor, epoch: int, lr: float, every_rank=False) -> None:
        """'stop' policy: raise if an iteration so far had a non-finite loss.

        Mid-epoch (``every_rank=False``) only single-process runs look: under DDP one
        rank must not leave while the others wait in a collective; at the epoch end
        every rank looks, and the ranks' results meet in the epoch's all-reduce.
        """
        if not every_rank and dist.world_size() > 1:
            return
        bad = int(first_bad)
        if bad > 0:
            self.guard.allow_step(float("nan"), epoch + 1, bad, lr)

    def _check_stop(self, epoch: int, step: int) -> None:
        signum = self.should_stop() if self.should_stop is not None else None
        if dist.world_size() > 1:  # all ranks stop after the same iteration
            signum = int(dist.all_reduce_sum(torch.tensor([float(signum or 0)]))[0]) or None
        if signum:
            raise TrainingInterrupted(signum, epoch + 1, step + 1)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, branches: Iterable[str] | None = None) -> dict[str, dict]:
        """Top-1 / top-5 error (%) of each branch on ``test_loader``, summed over ranks.

        Args:
            branches: branch names; default ``main`` (every branch with ``per_branch``).

        Returns:
            ``{branch: {'top1_err', 'top5_err', 'num_images'}}``, main first. Under DDP
            every rank must call it (collectives) and gets the same numbers.
        """
        if self.test_loader is None:
            raise ValueError("evaluate needs a test_loader")
        if branches is None:
            branches = self.bare.branch_names if self.per_branch else (MAIN,)
        branches = tuple(branches)
        # Ranks hold slightly different BN statistics after training; use rank 0's
        # (those in the checkpoint) everywhere.
        dist.broadcast_buffers(self.bare)
        was_training = self.bare.training
        self.bare.eval()
        counts = torch.zeros(len(branches), len(TOPK), dtype=torch.float64, device=self.device)
        seen = 0
        show = self.is_main and sys.stderr.isatty()
        for images, targets in tqdm(self.test_loader, desc="test", disable=not show, leave=False):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with autocast(self.amp, self.device):
                out = self.bare.forward_branches(images, branches)
            for j, b in enumerate(branches):
                counts[j] += topk_correct(out.logits[b].float(), targets, TOPK).double()
            seen += targets.shape[0]
        flat = torch.cat([counts.flatten(), counts.new_tensor([seen])])
        flat = dist.all_reduce_sum(flat).cpu()
        total = int(flat[-1])
        counts = flat[:-1].view(len(branches), len(TOPK))
        self.bare.train(was_training)
        if total == 0:
            raise ValueError("the test loader yielded no image")
        table = OrderedDict()
        for j, b in enumerate(branches):
            row = {
                f"top{k}_err": 100.0 * (1.0 - float(counts[j, i]) / total)
                for i, k in enumerate(TOPK)
            }
            row["num_images"] = total
            table[b] = row
        self.last_eval = {b: dict(r) for b, r in table.items()}
        return table

    # -------------------------------------------------------------------- run
    def _due(self, epoch: int) -> bool:
        last = epoch + 1 == self.max_epoch
        return last or (self.eval_freq > 0 and (epoch + 1) % self.eval_freq == 0)

    def _open_writer(self) -> None:
        if self.writer is None and self.is_main and self.tensorboard and self.save_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.save_dir))

    def run(self, start_epoch: int = 0) -> dict:
        """Train epochs ``start_epoch .. max_epoch - 1``, evaluating as scheduled.

        Returns:
            The results (also in ``results.json``): ``best`` (epoch and errors of main),
            ``final`` (the last evaluation, by branch), ``epochs``.
        """
        if self.save_dir is not None and self.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        self._open_writer()
        try:
            for epoch in range(start_epoch, self.max_epoch):
                record = self.train_epoch(epoch)
                is_best = False
                if self.test_loader is not None and self._due(epoch):
                    table = self.evaluate()
                    main = table[MAIN]
                    record["test/top1_err"] = main["top1_err"]
                    record["test/top5_err"] = main["top5_err"]
                    for b, row in table.items():
                        if b != MAIN:
                            record[f"test/{b}/top1_err"] = row["top1_err"]
                    if self.best is None or main["top1_err"] < self.best["top1_err"]:
                        is_best = True
                        self.best = {
                            "epoch": epoch + 1,
                            "top1_err": main["top1_err"],
                            "top5_err": main["top5_err"],
                        }
                self.history.append(record)
                if self.is_main:
                    self.log(self._epoch_line(record))
                    self._log_tensorboard(record)
                    if self.save_dir is not None:
                        self.save(CHECKPOINT, record["epoch"])
                        if is_best:
                            self.save(BEST_CHECKPOINT, record["epoch"])
            if self.test_loader is not None and (
                self.last_eval is None or start_epoch >= self.max_epoch
            ):
                self.evaluate()
            self.results = self._results()
            if self.is_main and self.save_dir is not None:
                if self.history:
                    plot_training_curves(self.history, self.save_dir / "training_curves.png")
                self.write_results()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        dist.barrier()
        return self.results

    def evaluate_only(self) -> dict:
        """Evaluate the current weights (``--eval-only``): print, and write ``results.json``."""
        table = self.evaluate()
        self.results = {"epochs": None, "best": self.best, "final": table}
        if self.is_main:
            self.log(format_table(table))
            if self.save_dir is not None:
                self.write_results()
        return self.results

    def _results(self) -> dict:
        epochs = self.history[-1]["epoch"] if self.history else 0
        results = {"epochs": epochs, "best": self.best, "final": self.last_eval}
        monitored = monitor_history(self.history)
        if monitored:
            results["grad_monitor"] = monitored
        return results

    def write_results(self) -> Path:
        path = self.save_dir / "results.json"
        atomic_write_text(path, json.dumps({**self.run_info, **self.results}, indent=1))
        return path

    # ---------------------------------------------------------------- output
    def save(self, name: str, epochs_done: int) -> Path:
        """Write a checkpoint ``save_dir/name`` (atomic, ``weights_only``-loadable)."""
        return save_checkpoint(
            self.save_dir / name,
            self.model,
            self.model_name,
            epochs_done,
            config=self.config,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=rng_state(),
            keep_previous=name == CHECKPOINT,
            history=self.history,
            best=self.best,
            metrics=self.last_eval,
        )

    def _epoch_line(self, r: Mapping) -> str:
        line = f"epoch {r['epoch']}/{self.max_epoch}  {epoch_terms(r, 4)}  lr {r['lr']:.2e}"
        if "test/top1_err" in r:
            line += f"  test err top1 {r['test/top1_err']:.2f} top5 {r['test/top5_err']:.2f}"
            line += f" (best {self.best['top1_err']:.2f} @ {self.best['epoch']})"
            others = [
                (k.split("/")[1], v)
                for k, v in r.items()
                if k.startswith("test/") and k.count("/") == 2
            ]
            line += "".join(f"  {b} top1 {v:.2f}" for b, v in others)
        if r.get("frozen"):
            line += "  [backbone frozen]"
        return line + f"  {r['seconds']:.0f}s"

    def _log_tensorboard(self, r: Mapping) -> None:
        if self.writer is None:
            return
        for key, value in r.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                group = "Test" if key.startswith("test/") else "Epoch"
                name = key[5:] if key.startswith("test/") else key
                self.writer.add_scalar(f"{group}/{name}", value, r["epoch"])
        self.writer.flush()


def format_table(table: Mapping[str, Mapping]) -> str:
    """Top-1 / top-5 error per branch as a small text table."""
    n = next(iter(table.values()))["num_images"]
    lines = [f"** test set: {n} images **", f"{'branch':<8}{'top1 err':>10}{'top5 err':>10}"]
    for b, row in table.items():
        lines.append(f"{b:<8}{row['top1_err']:>10.2f}{row['top5_err']:>10.2f}")
    return "\n".join(lines)


__all__ = [
    "AMP_MODES",
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "ClassificationEngine",
    "TrainingDiverged",
    "autocast",
    "check_amp",
    "format_table",
    "topk_correct",
    "topk_errors",
]
