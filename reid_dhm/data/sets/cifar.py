"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the python-pickle folders, 32x32 images."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..registry import DatasetSpec
from ._classification import classification_spec


def read(name: str, root: Path, train_transform, test_transform) -> tuple:
    """Both splits from ``root/cifar-10-batches-py`` or ``root/cifar-100-python``."""
    from ..classification import array_datasets, read_cifar  # torch: only when read

    return array_datasets(partial(read_cifar, name, root), train_transform, test_transform)


def transform(name: str, train: bool, image_size: int | None) -> Callable:
    """Pad 4 + random crop 32 + flip (training), then the data set's own normalisation."""
    from ..classification import cifar_default_transform

    return cifar_default_transform(name, train, image_size)


def _spec(name: str, classes: int) -> DatasetSpec:
    return classification_spec(
        name,
        f"CIFAR-{classes} ({classes} classes, 50k/10k 32x32 images; python pickles)",
        read=partial(read, name),
        transform=partial(transform, name),
        size=32,
        loader=(128, 500, 2),
        # ResNet-32 with He et al.'s CIFAR schedule: 164 epochs, /10 at 81 and 122.
        model={"name": "dhm_cifar_resnet32", "pretrained": False},
        data={"root": "data"},  # holds cifar-10-batches-py/ or cifar-100-python/
        scheduler={"name": "multi_step", "milestones": [81, 122], "gamma": 0.1},
        train={"max_epoch": 164},
    )


SPECS = (_spec("cifar10", 10), _spec("cifar100", 100))
