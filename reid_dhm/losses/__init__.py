"""The DHM loss and the per-epoch branch sampler."""

from .branch_sampler import POLICIES, BranchSampler
from .dhm_loss import DIRECTIONS, MODES, DHMLoss, kl_mimic, mimicking_pairs

__all__ = [
    "DIRECTIONS",
    "MODES",
    "POLICIES",
    "BranchSampler",
    "DHMLoss",
    "kl_mimic",
    "mimicking_pairs",
]
