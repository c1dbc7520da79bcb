"""The classification task of the training loop: CIFAR, ImageNet, Fashion-MNIST.

With :class:`~reid_dhm.engines.trainer.Trainer` it trains DHM / deep supervision /
baseline classifiers: one SGD step per batch on ``DHMLoss``, the schedule stepped once
per epoch (DESIGN 3: never per iteration). The task evaluates top-1 / top-5 error of the
main branch (every branch on request, paper Table 5) on every process over disjoint
shards and sums the counts, so every rank sees the same numbers; the best epoch by main
top-1 is kept (``best.pth`` beside ``checkpoint.pth``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.branches import MAIN
from ..utils.checkpoint import unwrap
from ..utils.progress import Progress
from . import distributed as dist
from .amp import AMP_MODES, autocast, check_amp
from .guards import TrainingDiverged

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


class ClassificationTask:
    """Images and labels in, top-k errors out.

    Args:
        train_loader: yields ``(images (B, 3, H, W), labels (B,))``; its sampler gets
            ``set_epoch(epoch)`` when it has one (``DistributedSampler``).
        test_loader: same item format; under DDP use ``distributed.eval_sampler``.
        per_branch: evaluate every branch, not only ``main``.
        amp: the autocast mode evaluation runs under (the training's).
        progress: show the evaluation's progress (a bar on a terminal, else a line
            every 30 s).
    """

    def __init__(
        self,
        train_loader: Iterable | None,
        test_loader: Iterable | None,
        *,
        per_branch: bool = False,
        amp: str = "none",
        progress: bool = False,
    ):
        if amp not in AMP_MODES:
            check_amp(amp, torch.device("cpu"))  # the one message for an unknown mode
        self.train_loader, self.test_loader = train_loader, test_loader
        self.per_branch, self.amp, self.progress = bool(per_branch), amp, progress
        self.best: dict | None = None  # {'epoch', 'top1_err', 'top5_err'} of main
        self.last: dict | None = None  # the last evaluation's table
        self._improved = False

    def unpack(self, batch) -> tuple[Tensor, Tensor]:
        images, targets = batch
        return images, targets

    @torch.no_grad()
    def evaluate(self, model: nn.Module, branches: Iterable[str] | None = None) -> dict:
        """Top-1 / top-5 error (%) of each branch on ``test_loader``, summed over ranks.

        Returns:
            ``{branch: {'top1_err', 'top5_err', 'num_images'}}``, main first. Under DDP
            every rank must call it (collectives) and gets the same numbers.
        """
        if self.test_loader is None:
            raise ValueError("evaluate needs a test_loader")
        bare = unwrap(model)
        if branches is None:
            branches = bare.branch_names if self.per_branch else (MAIN,)
        branches = tuple(branches)
        # Ranks hold slightly different BN statistics after training; use rank 0's.
        dist.broadcast_buffers(bare)
        was_training = bare.training
        bare.eval()
        try:
            counts, total = self._count(bare, branches)
        finally:
            bare.train(was_training)
        if total == 0:
            raise ValueError("the test loader yielded no image")
        table = OrderedDict()
        for j, b in enumerate(branches):
            row = {
                f"top{k}_err": 100.0 * (1.0 - float(counts[j, i]) / total)
                for i, k in enumerate(TOPK)
            }
            table[b] = {**row, "num_images": total}
        self.last = {b: dict(r) for b, r in table.items()}
        return table

    def _count(self, bare: nn.Module, branches: tuple[str, ...]) -> tuple[Tensor, int]:
        device = next(bare.parameters()).device
        counts = torch.zeros(len(branches), len(TOPK), dtype=torch.float64, device=device)
        seen = 0
        total = len(self.test_loader) if hasattr(self.test_loader, "__len__") else None
        shown = Progress(total, "test", "batches", enabled=self.progress)
        for images, targets in self.test_loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(self.amp, device):
                out = bare.forward_branches(images, branches)
            for j, b in enumerate(branches):
                counts[j] += topk_correct(out.logits[b].float(), targets, TOPK).double()
            seen += targets.shape[0]
            shown.update()
        shown.close()
        flat = dist.all_reduce_sum(torch.cat([counts.flatten(), counts.new_tensor([seen])])).cpu()
        return flat[:-1].view(len(branches), len(TOPK)), int(flat[-1])

    def test_record(self, table: Mapping, epoch: int) -> dict[str, float]:
        """History fields of the evaluation after ``epoch`` (1-based); keeps the best
        evaluation by main top-1 error (the trainer calls this once per evaluation)."""
        main = table[MAIN]
        self._improved = self.best is None or main["top1_err"] < self.best["top1_err"]
        if self._improved:
            self.best = {"epoch": epoch, "top1_err": main["top1_err"], "top5_err": main["top5_err"]}
        record = {"test/top1_err": main["top1_err"], "test/top5_err": main["top5_err"]}
        record.update({f"test/{b}/top1_err": r["top1_err"] for b, r in table.items() if b != MAIN})
        return record

    def is_best(self, table: Any) -> bool:
        return self._improved

    def results(self, trainer) -> dict:
        epochs = trainer.history[-1]["epoch"] if trainer.history else 0
        return {"epochs": epochs, "best": self.best, "final": self.last}

    def checkpoint_extras(self) -> dict:
        return {"best": self.best, "metrics": self.last}


__all__ = [
    "AMP_MODES",
    "TOPK",
    "ClassificationTask",
    "TrainingDiverged",
    "topk_correct",
    "topk_errors",
]
