"""ImageNet (ILSVRC-2012): ``train/<wnid>/`` and ``val/<wnid>/`` class folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ._classification import classification_spec


def read(root: Path, train_transform, test_transform) -> tuple:
    """``train/`` and ``val/`` (validation images sorted into class folders)."""
    from ..classification import read_imagenet  # torch / torchvision: only when read

    return read_imagenet(root, train_transform, test_transform)


def transform(train: bool, image_size: int | None) -> Callable:
    """RandomResizedCrop + flip (training); resize + center crop (evaluation); 224 default."""
    from ..classification import imagenet_transform

    return imagenet_transform(train, size=image_size or 224)


SPECS = (
    classification_spec(
        "imagenet",
        "ImageNet ILSVRC-2012 (1,000 classes; train/ and val/ class folders)",
        read=read,
        transform=transform,
        size=224,
        loader=(256, 250, 8),
        model={"name": "dhm_resnet50", "pretrained": False},
        data={"root": "data/imagenet"},  # holds train/<wnid>/ and val/<wnid>/
        scheduler={"name": "step", "step_size": 30, "gamma": 0.1},
        train={"max_epoch": 90, "print_freq": 100},
    ),
)
