"""reid-dhm: person re-identification with Dynamic Hierarchical Mimicking."""

import warnings

__version__ = "0.1.0"

# torchreid warns at import that its Cython ranking is missing; we never use its ranking
# (reid_dhm.evaluate replaces it), so the warning would only mislead.
warnings.filterwarnings("ignore", message="Cython evaluation .*is unavailable")

from .inference import FeatureExtractor  # noqa: E402
from .losses import BranchSampler, DHMLoss  # noqa: E402
from .models import (  # noqa: E402
    BranchOutputs,
    build_model,
    list_models,
    register_model,
    register_torchreid_models,
)
from .retrieval import GalleryIndex, evaluate  # noqa: E402

__all__ = [
    "BranchOutputs",
    "BranchSampler",
    "DHMLoss",
    "FeatureExtractor",
    "GalleryIndex",
    "__version__",
    "build_model",
    "evaluate",
    "list_models",
    "register_model",
    "register_torchreid_models",
]
