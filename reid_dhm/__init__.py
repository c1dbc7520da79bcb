"""reid-dhm: person re-identification with Dynamic Hierarchical Mimicking."""

__version__ = "0.1.0"

from .losses import BranchSampler, DHMLoss
from .models import (
    BranchOutputs,
    build_model,
    list_models,
    register_model,
    register_torchreid_models,
)

__all__ = [
    "BranchOutputs",
    "BranchSampler",
    "DHMLoss",
    "__version__",
    "build_model",
    "list_models",
    "register_model",
    "register_torchreid_models",
]
