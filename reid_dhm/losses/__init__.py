"""The DHM loss and the per-epoch branch sampler."""

from .branch_sampler import POLICIES, BranchSampler
from .dhm_loss import (
    DIRECTIONS,
    MODES,
    TEACHERS,
    DHMLoss,
    batch_hard_triplet,
    kl_mimic,
    mimicking_pairs,
)

__all__ = [
    "DIRECTIONS",
    "MODES",
    "POLICIES",
    "TEACHERS",
    "BranchSampler",
    "DHMLoss",
    "batch_hard_triplet",
    "kl_mimic",
    "mimicking_pairs",
]
