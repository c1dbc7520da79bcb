"""Fashion-MNIST (Xiao et al. 2017): the idx files Debian's dataset-fashion-mnist installs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ._classification import classification_spec

ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's package puts the files


def read(root: Path, train_transform, test_transform) -> tuple:
    """Both splits from the four (gzip'ed) idx files in ``root``."""
    from ..classification import array_datasets, read_fashion_mnist  # torch: only when read

    return array_datasets(partial(read_fashion_mnist, root), train_transform, test_transform)


def transform(train: bool, image_size: int | None) -> Callable:
    """CIFAR's recipe at the native 28x28 (``image_size`` resizes); 1 -> 3 channels."""
    from ..classification import fashion_mnist_transform

    return fashion_mnist_transform(train, image_size or 28)


SPECS = (
    classification_spec(
        "fashion-mnist",
        "Fashion-MNIST (10 classes, 60k/10k 28x28 grayscale images; offline)",
        default_root=ROOT,  # where it is read from when no root is given
        read=read,
        transform=transform,
        size=28,
        loader=(128, 500, 2),
        # A small, fast recipe for CPUs, not a paper's.
        model={"name": "dhm_cifar_resnet20", "pretrained": False},
        data={"root": ROOT},
        optim={"name": "sgd", "lr": 0.05, "weight_decay": 0.0005, "momentum": 0.9},
        scheduler={"name": "cosine", "warmup_epochs": 1},
        train={"max_epoch": 10},
    ),
)
