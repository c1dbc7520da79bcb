"""Dynamic branch sampling: which auxiliary branches are active in an epoch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..utils.branches import MAIN
from ..utils.checks import branch_name_tuple, check_int
from ..utils.options import BRANCH_P, POLICIES  # stated once, shared with the config schema


class BranchSampler:
    """Draws, once per epoch, the set of active branches (``main`` always included).

    Args:
        branches: the model's branch names in depth order (``main`` may be included).
        policy: ``'fixed'``: every branch, every epoch (the paper's main setting);
            ``'bernoulli'``: each aux branch active independently with probability ``p``.
        p: activation probability, a float for all aux branches or ``{branch: p}``.
        seed: the draw for epoch e depends only on (seed, e), so runs and resumed runs
            see the same sets.
    """

    def __init__(
        self,
        branches: Iterable[str],
        policy: str = "fixed",
        p: float | Mapping[str, float] = 0.5,
        seed: int = 0,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid policies are {list(POLICIES)}")
        self.aux = tuple(b for b in branch_name_tuple(branches, "branches") if b != MAIN)
        self.policy = policy
        probs = dict(p) if isinstance(p, Mapping) else dict.fromkeys(self.aux, p)
        unknown = sorted(set(probs) - set(self.aux))
        if unknown:
            raise ValueError(f"unknown branch {unknown[0]!r} in p; branches are {list(self.aux)}")
        for b, v in probs.items():
            BRANCH_P.check(v, f"p for {b!r}")
        self.p = {b: float(probs.get(b, 1.0)) for b in self.aux}
        self.seed = check_int(seed, "BranchSampler seed", low=0)

    def sample(self, epoch: int) -> tuple[str, ...]:
        """Active branches for ``epoch``, in depth order, ``main`` first."""
        if self.policy == "fixed":
            return (MAIN, *self.aux)
        rng = np.random.default_rng([self.seed, check_int(epoch, "BranchSampler epoch", low=0)])
        draws = rng.random(len(self.aux))
        return (MAIN, *(b for b, u in zip(self.aux, draws) if u < self.p[b]))

    def __repr__(self) -> str:
        return f"BranchSampler(branches={self.aux}, policy={self.policy!r}, p={self.p})"
