"""Gradient-consistency monitor: do the branches pull the shared stem the same way?

The paper's central argument (section 3.3, Eq. 11) is that mimicking penalises
branches whose gradients on the shared stem disagree, while plain deep supervision
lets them cancel out. This monitor makes that visible. Every ``every`` iterations it
takes the training batch, splits the loss by branch (``DHMLoss.branch_losses``: a
branch's CE term plus the KL terms it is the student of, so the parts sum to the
loss), and computes each part's gradient with respect to the main-path stages that
branch runs through. It reports, per pair of branches, the cosine similarity of
their gradients over the stages they share (all of them together, and per stage),
and each branch's gradient norm there.

It costs one extra forward pass and one backward pass per branch on the sampled
iterations (measured in docs/BENCHMARKS.md), and it never changes training: the
forward runs on the bare model (no DDP hooks), parameters' ``.grad`` are not touched,
and BatchNorm running statistics are restored afterwards.

Keys (floats): ``grad/cos/<p>~<q>``, ``grad/cos/<stage>/<p>~<q>``, ``grad/norm/<b>``,
``grad/norm/<stage>/<b>``.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..losses import DHMLoss
from ..models import BranchOutputs
from ..utils.checkpoint import unwrap
from ..utils.checks import check_int
from .guards import restore_buffers, snapshot_buffers

PREFIX = "grad/"


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Cosine similarity of two gradients given as matching lists of flat tensors.

    NaN when either gradient is exactly zero (the angle is undefined).
    """
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x.double().pow(2).sum()) for x in a))
    nb = math.sqrt(sum(float(y.double().pow(2).sum()) for y in b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return dot / (na * nb)


def _norm(parts: Iterable[Tensor]) -> float:
    return math.sqrt(sum(float(x.double().pow(2).sum()) for x in parts))


class GradientMonitor:
    """Samples per-branch gradients on the shared stem of a DHM model.

    Args:
        model: the (possibly DDP-wrapped) reid_dhm model being trained.
        criterion: the run's :class:`DHMLoss` (its ``branch_losses`` splits the loss).
        every: measure on iterations 0, N, 2N, ... of every epoch (so at least once
            an epoch).
    """

    def __init__(self, model: nn.Module, criterion: DHMLoss, every: int):
        self.bare = unwrap(model)
        self.criterion = criterion
        self.every = check_int(every, "grad_monitor_every", low=1)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def due(self, step: int) -> bool:
        """Whether 0-based iteration ``step`` of an epoch is sampled."""
        return step % self.every == 0

    def _stage_params(self) -> OrderedDict[str, list[nn.Parameter]]:
        out = OrderedDict()
        for name in self.bare.stage_names:
            params = [p for p in getattr(self.bare, name).parameters() if p.requires_grad]
            if params:  # parameter-free stages (ReLU, pooling) and frozen ones carry none
                out[name] = params
        return out

    def measure(
        self,
        images: Tensor,
        targets: Tensor,
        active: Iterable[str] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> dict[str, float]:
        """Per-pair cosines and per-branch norms on one batch.

        Args:
            images: (B, 3, H, W) on the model's device; targets: (B,) class indices.
            active: the branches trained in this epoch (``main`` always included).
            autocast: the engine's mixed-precision context, if any.

        Returns:
            ``{key: value}`` (see the module docstring); empty when every stem stage
            is frozen. The values are also added to this epoch's running means.
        """
        bare = self.bare
        stage_params = self._stage_params()
        if not stage_params:
            return {}
        names = bare.branch_names if active is None else tuple(active)
        saved = snapshot_buffers(bare)
        try:
            with autocast or contextlib.nullcontext():
                output = bare.forward_branches(images, names)
            # The loss in float32 whatever the autocast dtype, as the engines compute it.
            output = BranchOutputs(
                logits=OrderedDict((b, z.float()) for b, z in output.logits.items()),
                features=OrderedDict((b, f.float()) for b, f in output.features.items()),
            )
            losses = self.criterion.branch_losses(output, targets, names)
            grads: dict[str, OrderedDict[str, list[Tensor]]] = {}
            branches = list(losses)
            for i, branch in enumerate(branches):
                path = [s for s in bare.branch_path(branch) if s in stage_params]
                flat = [p for s in path for p in stage_params[s]]
                got = torch.autograd.grad(
                    losses[branch], flat, retain_graph=i < len(branches) - 1, allow_unused=True
                )
                it = iter(got)
                grads[branch] = OrderedDict()
                for s in path:
                    grads[branch][s] = [
                        (g if g is not None else torch.zeros_like(p)).detach().flatten()
                        for p, g in zip(stage_params[s], it)
                    ]
        finally:
            restore_buffers(bare, saved)
        values = self.statistics(grads)
        for key, value in values.items():
            if math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + value
                self._counts[key] = self._counts.get(key, 0) + 1
        return values

    @staticmethod
    def statistics(grads: Mapping[str, Mapping[str, Sequence[Tensor]]]) -> dict[str, float]:
        """Cosines and norms from ``{branch: {stage: [flat parameter gradients]}}``.

        A pair's overall cosine treats the stages both branches run through as one
        vector (the concatenation of their parameters' gradients).
        """
        out: dict[str, float] = {}
        branches = list(grads)
        for b in branches:
            out[f"{PREFIX}norm/{b}"] = _norm(x for parts in grads[b].values() for x in parts)
            for stage, parts in grads[b].items():
                out[f"{PREFIX}norm/{stage}/{b}"] = _norm(parts)
        for i, p in enumerate(branches):
            for q in branches[i + 1 :]:
                shared = [s for s in grads[p] if s in grads[q]]
                a = [x for s in shared for x in grads[p][s]]
                b = [x for s in shared for x in grads[q][s]]
                out[f"{PREFIX}cos/{p}~{q}"] = cosine(a, b)
                for s in shared:
                    out[f"{PREFIX}cos/{s}/{p}~{q}"] = cosine(grads[p][s], grads[q][s])
        return out

    def epoch_means(self) -> dict[str, float]:
        """Means of every key since the last call (then reset)."""
        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self._sums, self._counts = {}, {}
        return means


def monitor_history(history: Sequence[Mapping]) -> list[dict]:
    """The monitor's per-epoch means out of a run's history (for ``results.json``)."""
    rows = []
    for record in history:
        values = {k: v for k, v in record.items() if k.startswith(PREFIX)}
        if values:
            rows.append({"epoch": record["epoch"], **values})
    return rows


__all__ = ["PREFIX", "GradientMonitor", "cosine", "monitor_history"]
