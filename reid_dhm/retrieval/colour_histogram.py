"""A hand-crafted colour-histogram descriptor: the floor a learned re-ID model must beat."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from ..utils.images import read_image


def colour_histogram(
    image: Image.Image, stripes: int = 4, bins: tuple[int, int, int] = (8, 4, 4)
) -> np.ndarray:
    """Hellinger-normalised joint HSV histograms of ``stripes`` horizontal stripes.

    Stripes keep coarse layout (head / torso / legs), the usual strong variant of
    this baseline. Returns a float32 vector of length ``stripes * prod(bins)``.
    """
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int64)
    h, s, v = (hsv[..., i] * bins[i] // 256 for i in range(3))
    codes = (h * bins[1] + s) * bins[2] + v
    n = int(np.prod(bins))
    parts = []
    for rows in np.array_split(codes, stripes, axis=0):
        hist = np.bincount(rows.ravel(), minlength=n).astype(np.float64)
        parts.append(np.sqrt(hist / max(hist.sum(), 1.0)))
    feat = np.concatenate(parts)
    return (feat / np.linalg.norm(feat)).astype(np.float32)


def colour_histogram_features(paths: Iterable[str], **kwargs) -> np.ndarray:
    """(N, D) descriptors of the images at ``paths`` (see :func:`colour_histogram`)."""
    feats = []
    for path in paths:
        feats.append(colour_histogram(read_image(path), **kwargs))
    return np.stack(feats)
