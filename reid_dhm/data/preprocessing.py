"""How an image becomes model input, as a value stored with every re-ID checkpoint.

A trained model is only as good as the preprocessing it is fed: the input size, the
interpolation used to resize, and the normalisation statistics. ``Preprocessing``
holds exactly those; the re-ID engine stores it in every checkpoint as its own field
(``checkpoint['preprocessing']``), so that ``FeatureExtractor``, the exporters and
users' pipelines read it from there instead of digging in the training config.

This module has no torch import: it is safe to use from light tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from ..utils.images import read_image  # the one image reader, kept importable here

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Interpolation name -> PIL filter. 'bilinear' is what torchreid's test transform
# (torchvision Resize on PIL images) uses, so it is what models are trained to see.
INTERPOLATIONS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
}


def _triple(value, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"preprocessing {what} must be three numbers, got {value!r}") from None
    if len(values) != 3:
        raise ValueError(f"preprocessing {what} must be three numbers, got {value!r}")
    return values


@dataclass(frozen=True)
class Preprocessing:
    """Resize to (height, width) with ``interpolation``, RGB in [0, 1], then (x - mean) / std.

    Attributes:
        height, width: the model's input size in pixels.
        mean, std: per-channel (R, G, B) normalisation statistics.
        interpolation: ``'bilinear'`` (default), ``'bicubic'`` or ``'nearest'``.
    """

    height: int = 256
    width: int = 128
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    interpolation: str = "bilinear"

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing {name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std must be > 0, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; valid ones are "
                f"{list(INTERPOLATIONS)}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    def to_dict(self) -> dict:
        """Plain values (checkpoint- and JSON-safe)."""
        return {
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> Preprocessing:
        unknown = sorted(set(values) - {"height", "width", "mean", "std", "interpolation"})
        if unknown:
            raise ValueError(f"unknown preprocessing field {unknown[0]!r}")
        return cls(**dict(values))

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping) -> Preprocessing:
        """A checkpoint's own ``preprocessing`` field; for checkpoints written before it
        existed, the input size and statistics of its training config (else defaults)."""
        stored = ckpt.get("preprocessing")
        if stored:
            return cls.from_dict(stored)
        data = (ckpt.get("config") or {}).get("data") or {}
        kwargs = {}
        if "height" in data and "width" in data:
            kwargs.update(height=int(data["height"]), width=int(data["width"]))
        if "norm_mean" in data and "norm_std" in data:
            kwargs.update(mean=data["norm_mean"], std=data["norm_std"])
        return cls(**kwargs)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "Preprocessing",
    "read_image",
]
