"""The DHM objective: cross-entropy on every active branch plus pairwise KL mimicking.

    L = sum_b lambda_b CE(y, z_b)
      + sum_{p != q} mu T^2 KL( softmax(z_p / T).detach() || softmax(z_q / T) )

Each ordered pair (teacher p, student q) is one term; the teacher is detached, so
the gradient equals the paper's soft cross-entropy (Eq. 9). KL is summed over
classes and averaged over the batch, computed from log-softmax for stability.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import branch_name_tuple

MODES = ("baseline", "dsl", "dhm")
DIRECTIONS = ("bidirectional", "top-down", "bottom-up")
MAIN = "main"


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s are {list(valid)}")
    return value


def mimicking_pairs(branches: Iterable[str], direction: str) -> list[tuple[str, str]]:
    """Ordered (teacher, student) pairs among ``branches`` given in depth order.

    Depth order means the deepest branch first (``main``, ``aux1``, ``aux2``, ...).
    ``top-down``: shallower branches mimic deeper ones (teacher deeper than student);
    ``bottom-up``: the reverse; ``bidirectional``: both, n(n-1) pairs.
    """
    _choice(direction, DIRECTIONS, "direction")
    order = list(branches)
    pairs = []
    for i, teacher in enumerate(order):
        for j, student in enumerate(order):
            if i == j:
                continue
            if direction == "top-down" and not i < j:
                continue
            if direction == "bottom-up" and not i > j:
                continue
            pairs.append((teacher, student))
    return pairs


def kl_mimic(teacher: Tensor, student: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean; teacher detached.

    Args:
        teacher, student: logits, shape (B, K).

    Returns:
        A scalar; gradients reach ``student`` only.
    """
    t = F.log_softmax(teacher.detach() / temperature, dim=1)
    s = F.log_softmax(student / temperature, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


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

    Call ``crit(output, targets, active=None)`` with ``output`` a ``BranchOutputs`` (or
    any mapping ``branch -> (B, K) logits`` in depth order) and ``targets`` (B,) class
    indices. ``active`` restricts the loss to those branches (``main`` is always in).
    Returns a dict: ``loss`` (the scalar to back-propagate) and every term as a
    detached scalar, ``ce/<branch>`` and ``kl/<teacher>-><student>`` (unweighted).
    """

    def __init__(
        self,
        mode: str = "dhm",
        direction: str = "bidirectional",
        label_smooth: float = 0.0,
        temperature: float = 1.0,
        ce_weights: Mapping[str, float] | None = None,
        kl_weight: float = 1.0,
    ):
        super().__init__()
        self.mode = _choice(mode, MODES, "mode")
        self.direction = _choice(direction, DIRECTIONS, "direction")
        if not 0.0 <= label_smooth < 1.0:
            raise ValueError(f"label_smooth must be in [0, 1), got {label_smooth!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
        self.label_smooth = float(label_smooth)
        self.temperature = float(temperature)
        if ce_weights is not None and not isinstance(ce_weights, Mapping):
            raise ValueError(
                f"ce_weights must be a mapping branch -> weight, got {type(ce_weights).__name__}"
            )
        self.ce_weights = dict(ce_weights or {})
        self.kl_weight = float(kl_weight)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, direction={self.direction!r}, label_smooth={self.label_smooth}, "
            f"temperature={self.temperature}, kl_weight={self.kl_weight}"
        )

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

    def forward(
        self, output, targets: Tensor, active: Iterable[str] | None = None
    ) -> dict[str, Tensor]:
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
        terms: OrderedDict[str, Tensor] = OrderedDict()
        total = logits[MAIN].new_zeros(())
        for b in used:
            ce = F.cross_entropy(logits[b], targets, label_smoothing=self.label_smooth)
            terms[f"ce/{b}"] = ce
            total = total + self.ce_weights.get(b, 1.0) * ce
        if self.mode == "dhm":
            for teacher, student in mimicking_pairs(used, self.direction):
                kl = kl_mimic(logits[teacher], logits[student], self.temperature)
                terms[f"kl/{teacher}->{student}"] = kl
                total = total + self.kl_weight * kl
        out = {"loss": total}
        out.update((k, v.detach()) for k, v in terms.items())
        return out


__all__ = ["DIRECTIONS", "MODES", "DHMLoss", "kl_mimic", "mimicking_pairs"]
