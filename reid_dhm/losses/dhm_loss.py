"""The DHM objective: cross-entropy on every active branch plus pairwise KL mimicking.

    L = sum_b lambda_b CE(y, z_b)
      + sum_{p != q} mu T^2 KL( softmax(z_p / T).detach() || softmax(z_q / T) )

Each ordered pair (teacher p, student q) is one term; the teacher is detached, so
the gradient equals the paper's soft cross-entropy (Eq. 9). KL is summed over
classes and averaged over the batch, computed from log-softmax for stability.

Two switches move away from the paper (``kl_schedule='constant'``, ``kl_gate='none'``
is the paper): the weight of a term may follow a schedule (a warm-up ramp, or
``adaptive``: mu times a running mean of the teacher's training accuracy), and a
per-sample gate may keep only the samples the teacher gets right (``correct``) or
weigh each by the teacher's probability of the label (``confidence``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.branches import MAIN
from ..utils.checks import branch_name_tuple, check_choice
from ..utils.options import (  # stated once, shared with the config schema
    CE_WEIGHT,
    DIRECTIONS,
    KL_ADAPTIVE_DECAY,
    KL_GATES,
    KL_WARMUP_EPOCHS,
    KL_WEIGHT,
    LABEL_SMOOTH,
    MODES,
    TEACHERS,
    TEMPERATURE,
    TRIPLET_MARGIN,
    TRIPLET_WEIGHT,
    implied_kl_schedule,
)


def mimicking_pairs(
    branches: Iterable[str], direction: str, teachers: str = "all"
) -> list[tuple[str, str]]:
    """Ordered (teacher, student) pairs among ``branches`` given in depth order.

    Depth order means the deepest branch first (``main``, ``aux1``, ``aux2``, ...).
    ``direction``: ``top-down``: shallower branches mimic deeper ones (teacher deeper
    than student); ``bottom-up``: the reverse; ``bidirectional``: both, n(n-1) pairs.
    ``teachers`` (applied on top of the direction): ``all`` (the paper); ``deeper``:
    every branch but the shallowest one in ``branches`` teaches; ``main``: only the
    main branch teaches.
    """
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(teachers, TEACHERS, "kl_teachers value")
    order = list(branches)
    if teachers == MAIN:
        allowed = {MAIN}
    elif teachers == "deeper":
        allowed = set(order[:-1])
    else:
        allowed = set(order)
    pairs = []
    for i, teacher in enumerate(order):
        if teacher not in allowed:
            continue
        for j, student in enumerate(order):
            if i == j:
                continue
            if direction == "top-down" and not i < j:
                continue
            if direction == "bottom-up" and not i > j:
                continue
            pairs.append((teacher, student))
    return pairs


def kl_mimic(
    teacher: Tensor, student: Tensor, temperature: float = 1.0, weights: Tensor | None = None
) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean; teacher detached.

    Args:
        teacher, student: logits, shape (B, K).
        weights: optional (B,) per-sample weights (a gate); the weighted per-sample KL
            is summed and divided by B, so a weight below 1 only removes signal.

    Returns:
        A scalar; gradients reach ``student`` only.
    """
    t = F.log_softmax(teacher.detach() / temperature, dim=1)
    s = F.log_softmax(student / temperature, dim=1)
    if weights is None:
        return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2
    per_sample = (t.exp() * (t - s)).sum(dim=1)
    return (per_sample * weights.detach()).sum() / len(per_sample) * temperature**2


def kl_gate_weights(gate: str, teacher: Tensor, targets: Tensor) -> Tensor | None:
    """Per-sample weights (B,) of a teacher's KL terms, or None for ``gate='none'``.

    ``correct``: 1 where the teacher's top class is the label, else 0; ``confidence``:
    the teacher's probability of the label (softmax at temperature 1). Detached.

    Args:
        teacher: (B, K) logits; targets: (B,) class indices.
    """
    check_choice(gate, KL_GATES, "kl_gate")
    if gate == "none":
        return None
    teacher = teacher.detach()
    if gate == "correct":
        return (teacher.argmax(dim=1) == targets).to(teacher.dtype)
    return F.softmax(teacher, dim=1).gather(1, targets[:, None]).squeeze(1)


def _mean_over_processes(value: Tensor) -> Tensor:
    """``value`` averaged over the DDP processes (unchanged in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    value = value.clone()
    torch.distributed.all_reduce(value)  # SUM: every backend has it (gloo has no AVG)
    return value / torch.distributed.get_world_size()


def batch_hard_triplet(
    features: Tensor, targets: Tensor, margin: float = 0.3, soft: bool = False
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on one branch's embeddings.

    For every anchor with at least one positive and one negative in the batch: the
    Euclidean distance to its farthest positive ``d_ap`` and to its nearest negative
    ``d_an``; the loss is ``mean(max(0, d_ap - d_an + margin))``, or with ``soft``
    ``mean(log(1 + exp(d_ap - d_an)))``. Anchors without both are left out (0 when none
    has both, still connected to the graph).

    Args:
        features: (B, D) embeddings; targets: (B,) identity labels.
    """
    sq = features.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * features @ features.t()).clamp_min(1e-12).sqrt()
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=features.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    # A mask, not indexing or a branch on valid.any(): no host read (a GPU sync) per batch.
    d_ap = dist.masked_fill(~pos, float("-inf")).max(1).values
    d_an = dist.masked_fill(~neg, float("inf")).min(1).values
    gap = torch.where(valid, d_ap - d_an, 0.0)  # anchors left out: a finite stand-in
    per_anchor = F.softplus(gap) if soft else F.relu(gap + margin)
    # The mean over valid anchors; 0 (still connected to the graph) when there is none.
    return (per_anchor * valid).sum() / valid.sum().clamp_min(1)


class DHMLoss(nn.Module):
    """DHM / deep-supervision / baseline objective over a model's per-branch logits.

    Args:
        mode: ``'dhm'`` (CE on every active branch + pairwise KL), ``'dsl'`` (CE on every
            active branch, no KL) or ``'baseline'`` (CE on ``main`` only).
        direction: which (teacher, student) pairs mimic: ``'bidirectional'`` (default),
            ``'top-down'`` (shallower branches mimic deeper ones) or ``'bottom-up'``.
        label_smooth: label-smoothing epsilon for every CE term (0 = plain CE).
        temperature: softmax temperature T of the KL terms (scaled by T^2).
        ce_weights: optional ``{branch: lambda}``; missing branches weigh 1.
        kl_weight: mu, the weight of every KL term.
        kl_schedule: how the KL weight moves: ``'constant'`` (mu throughout, the
            paper), ``'warmup'`` (a linear ramp over ``kl_warmup_epochs``) or
            ``'adaptive'`` (a term teacher -> student weighs ``mu * a_teacher``, with
            ``a_teacher`` a running mean of the teacher's training accuracy in [0, 1],
            see :meth:`update_trust`). None: ``'warmup'`` when ``kl_warmup_epochs > 0``,
            else the library default.
        kl_warmup_epochs: E (``warmup`` only); the KL weight ramps linearly from 0 to
            ``kl_weight`` over the first E epochs (``kl_weight * e / E`` in 0-based epoch
            e < E). Engines call :meth:`set_epoch` at the start of every epoch.
        kl_adaptive_decay: the running mean's decay per training call (``adaptive``):
            ``a <- d * a + (1 - d) * batch accuracy``, starting at 0.
        kl_gate: per-sample gate of every KL term: ``'none'`` (the paper),
            ``'correct'`` (only samples whose teacher's top class is the label count) or
            ``'confidence'`` (each sample weighs the teacher's probability of the
            label); the sum is divided by the batch size either way.
        kl_teachers: which branches act as teachers: ``'all'`` (the paper),
            ``'deeper'`` (all but the shallowest active branch) or ``'main'``;
            orthogonal to ``direction``.
        triplet_weight: weight of a batch-hard triplet term on every active branch's
            embedding (``tri/<branch>``, on the feature before a BNNeck); 0 = off.
            Needs batches of P identities x K images (``data.sampler=identity``).
        triplet_margin: its margin (0.3, BoT's); triplet_soft: soft-margin version.

    Call ``crit(output, targets, active=None)`` with ``output`` a ``BranchOutputs`` (or
    any mapping ``branch -> (B, K) logits`` in depth order) and ``targets`` (B,) class
    indices. ``active`` restricts the loss to those branches (``main`` is always in).
    Returns a dict: ``loss`` (the scalar to back-propagate) and every term as a
    detached scalar, ``ce/<branch>`` and ``kl/<teacher>-><student>`` (unweighted by mu
    and the schedule, gated). In training mode a call also updates the adaptive
    schedule's running accuracies; :meth:`branch_losses` never does.
    :meth:`branch_losses` splits ``loss`` by the branch whose output each term's
    gradient reaches (a KL term reaches its student only).
    """

    def __init__(
        self,
        mode: str = "dhm",
        direction: str = "bidirectional",
        label_smooth: float = 0.0,
        temperature: float = 1.0,
        ce_weights: Mapping[str, float] | None = None,
        kl_weight: float = 1.0,
        kl_warmup_epochs: int = 0,
        kl_teachers: str = "all",
        triplet_weight: float = 0.0,
        triplet_margin: float = 0.3,
        triplet_soft: bool = False,
        kl_schedule: str | None = None,
        kl_adaptive_decay: float = 0.99,
        kl_gate: str = "none",
    ):
        super().__init__()
        self.mode = check_choice(mode, MODES, "mode")
        self.direction = check_choice(direction, DIRECTIONS, "direction")
        self.kl_teachers = check_choice(kl_teachers, TEACHERS, "kl_teachers value")
        if self.kl_teachers == MAIN and self.direction == "bottom-up":
            raise ValueError(
                "kl_teachers='main' with direction='bottom-up' leaves no KL pair (bottom-up "
                "teachers are shallower than their students; main is the deepest branch)"
            )
        if isinstance(kl_warmup_epochs, bool) or not isinstance(kl_warmup_epochs, int):
            raise ValueError(f"kl_warmup_epochs must be an integer, got {kl_warmup_epochs!r}")
        KL_WARMUP_EPOCHS.check(kl_warmup_epochs, "kl_warmup_epochs")
        self.kl_schedule = implied_kl_schedule(kl_schedule, kl_warmup_epochs)
        self.kl_adaptive_decay = float(
            KL_ADAPTIVE_DECAY.check(kl_adaptive_decay, "kl_adaptive_decay")
        )
        self.kl_gate = check_choice(kl_gate, KL_GATES, "kl_gate")
        # branch -> running mean of its training accuracy (0-d float32 tensors on the
        # logits' device; ``adaptive`` only). Saved with the loss's state_dict.
        self.kl_trust: dict[str, Tensor] = {}
        LABEL_SMOOTH.check(label_smooth, "label_smooth")
        TEMPERATURE.check(temperature, "temperature")
        KL_WEIGHT.check(kl_weight, "kl_weight")
        self.label_smooth = float(label_smooth)
        self.temperature = float(temperature)
        if ce_weights is not None and not isinstance(ce_weights, Mapping):
            raise ValueError(
                f"ce_weights must be a mapping branch -> weight, got {type(ce_weights).__name__}"
            )
        self.ce_weights = dict(ce_weights or {})
        for branch, weight in self.ce_weights.items():
            CE_WEIGHT.check(weight, f"ce_weights[{branch!r}]")
        self.kl_weight = float(kl_weight)
        self.kl_warmup_epochs = kl_warmup_epochs
        self.epoch = 0
        TRIPLET_WEIGHT.check(triplet_weight, "triplet_weight")
        TRIPLET_MARGIN.check(triplet_margin, "triplet_margin")
        self.triplet_weight = float(triplet_weight)
        self.triplet_margin = float(triplet_margin)
        self.triplet_soft = bool(triplet_soft)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, direction={self.direction!r}, label_smooth={self.label_smooth}, "
            f"temperature={self.temperature}, kl_weight={self.kl_weight}, "
            f"kl_schedule={self.kl_schedule!r}, kl_warmup_epochs={self.kl_warmup_epochs}, "
            f"kl_gate={self.kl_gate!r}, kl_teachers={self.kl_teachers!r}"
        )

    # The adaptive schedule's running accuracies travel in ``state_dict()`` as extra
    # state (plain floats: a float32 value survives the round trip exactly, so a resumed
    # run continues bit for bit).
    def get_extra_state(self) -> dict:
        return {"kl_trust": {b: float(v) for b, v in self.kl_trust.items()}}

    def set_extra_state(self, state: dict) -> None:
        trust = (state or {}).get("kl_trust") or {}
        self.kl_trust = {b: torch.tensor(float(v), dtype=torch.float32) for b, v in trust.items()}

    def update_trust(self, logits: Mapping[str, Tensor], targets: Tensor, branches) -> None:
        """``a_b <- d * a_b + (1 - d) * acc_b`` for each of ``branches``, with ``acc_b``
        the fraction of this batch that branch classifies right (averaged over DDP
        processes). Stays on the device: no host read.

        Args:
            logits: branch -> (B, K); targets: (B,).
        """
        d = self.kl_adaptive_decay
        for b in branches:
            z = logits[b].detach()
            acc = _mean_over_processes((z.argmax(dim=1) == targets).float().mean())
            prev = self.kl_trust.get(b)
            prev = acc.new_zeros(()) if prev is None else prev.to(acc.device)
            self.kl_trust[b] = d * prev + (1.0 - d) * acc

    def trust_record(self) -> dict[str, float]:
        """``{'kl_trust/<branch>': running accuracy}`` (adaptive only; reads the device)."""
        if self.kl_schedule != "adaptive":
            return {}
        return {f"kl_trust/{b}": float(v) for b, v in self.kl_trust.items()}

    def kl_weight_at(self, epoch: int) -> float:
        """The KL weight in 0-based ``epoch``: a linear ramp over the warm-up, then mu."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        if self.kl_schedule != "warmup" or epoch >= self.kl_warmup_epochs:
            return self.kl_weight
        return self.kl_weight * epoch / self.kl_warmup_epochs

    def set_epoch(self, epoch: int) -> None:
        """Use the KL weight of 0-based ``epoch`` from now on (engines call it every epoch)."""
        self.kl_weight_at(epoch)  # validates
        self.epoch = int(epoch)

    @property
    def current_kl_weight(self) -> float:
        """The weight the KL terms get in the current epoch (see :meth:`set_epoch`)."""
        return self.kl_weight_at(self.epoch)

    def branches_used(self, available: Iterable[str], active: Iterable[str] | None = None):
        """The branches that get a term, in depth order."""
        available = list(available)
        if MAIN not in available:
            raise ValueError(f"the model output has no {MAIN!r} branch (has {available})")
        if self.mode == "baseline":
            return [MAIN]
        if active is None:
            return available
        active = set(branch_name_tuple(active, "active"))
        unknown = sorted(active - set(available))
        if unknown:
            raise ValueError(
                f"active branch {unknown[0]!r} is not in the model output; "
                f"output branches are {available}"
            )
        return [b for b in available if b == MAIN or b in active]

    def _terms(self, output, targets: Tensor, active: Iterable[str] | None, update: bool = False):
        """Every term as (name, branch its gradient reaches, weight, value), in order.

        ``update``: first move the adaptive schedule's running accuracies by this batch.
        """
        logits = getattr(output, "logits", output)
        if not isinstance(logits, Mapping):
            raise TypeError(
                f"DHMLoss expects BranchOutputs or a mapping branch -> logits, "
                f"got {type(output).__name__}"
            )
        used = self.branches_used(logits, active)
        unknown = sorted(set(self.ce_weights) - set(logits))
        if unknown:
            raise ValueError(
                f"ce_weights names branch {unknown[0]!r}, which is not in the model output "
                f"{list(logits)}"
            )
        terms = []
        for b in used:
            ce = F.cross_entropy(logits[b], targets, label_smoothing=self.label_smooth)
            terms.append((f"ce/{b}", b, self.ce_weights.get(b, 1.0), ce))
        if self.triplet_weight > 0:
            features = getattr(output, "features", None)
            if not isinstance(features, Mapping):
                raise ValueError(
                    "the triplet term needs every branch's embedding: pass the model's "
                    "BranchOutputs, not bare logits"
                )
            for b in used:
                tri = batch_hard_triplet(
                    features[b], targets, self.triplet_margin, self.triplet_soft
                )
                terms.append((f"tri/{b}", b, self.triplet_weight, tri))
        if self.mode == "dhm":
            terms += self._kl_terms(logits, targets, used, update)
        return logits, terms

    def _kl_terms(self, logits, targets: Tensor, used: list[str], update: bool) -> list:
        pairs = mimicking_pairs(used, self.direction, self.kl_teachers)
        teachers = list(dict.fromkeys(t for t, _ in pairs))
        adaptive = self.kl_schedule == "adaptive"
        if adaptive and update:
            self.update_trust(logits, targets, teachers)
        mu = self.current_kl_weight
        gates = {t: kl_gate_weights(self.kl_gate, logits[t], targets) for t in teachers}
        terms = []
        for teacher, student in pairs:
            kl = kl_mimic(logits[teacher], logits[student], self.temperature, gates[teacher])
            weight = mu
            if adaptive:  # a teacher never seen in training (no running mean yet) weighs 0
                trust = self.kl_trust.get(teacher)
                weight = mu * trust.to(kl.device) if trust is not None else 0.0
            terms.append((f"kl/{teacher}->{student}", student, weight, kl))
        return terms

    def forward(
        self, output, targets: Tensor, active: Iterable[str] | None = None
    ) -> dict[str, Tensor]:
        logits, terms = self._terms(output, targets, active, update=self.training)
        total = logits[MAIN].new_zeros(())
        for _, _, weight, value in terms:
            total = total + weight * value
        out = {"loss": total}
        out.update((name, value.detach()) for name, _, _, value in terms)
        return out

    def branch_losses(
        self, output, targets: Tensor, active: Iterable[str] | None = None
    ) -> OrderedDict[str, Tensor]:
        """The loss split by branch: ``{branch: sum of weighted terms whose gradient
        reaches that branch's output}`` (its CE term and the KL terms it is the student
        of), in depth order. The values sum to ``forward(...)['loss']``; the gradient
        of one of them is what that branch pushes into the shared stem.
        """
        logits, terms = self._terms(output, targets, active)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for _, branch, weight, value in terms:
            out[branch] = out.get(branch, logits[MAIN].new_zeros(())) + weight * value
        return out


__all__ = [
    "DIRECTIONS",
    "KL_GATES",
    "MODES",
    "TEACHERS",
    "DHMLoss",
    "batch_hard_triplet",
    "kl_gate_weights",
    "kl_mimic",
    "mimicking_pairs",
]
