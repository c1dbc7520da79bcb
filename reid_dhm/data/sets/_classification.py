"""What every classification recipe shares (DESIGN 3); each data set's file builds on it.

Batch sizes are global: under torchrun each of N processes takes batch_size / N. The data
set's own normalisation is used (norm_mean / norm_std are re-ID keys); data.transforms: []
turns the paper's augmentation off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import DatasetSpec


def classification_preset(**sections: Any) -> dict[str, Any]:
    """The shared classification sections, with ``sections`` replacing whole sections.

    ``train`` is the exception: its keys are merged over the shared ones, since every
    recipe keeps the shared evaluation and printing settings.
    """
    preset: dict[str, Any] = {
        "model": {"pretrained": False},  # the paper trains its classifiers from scratch
        "loss": {"label_smooth": 0.0},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0001, "momentum": 0.9},
        "train": {"fixbase_epoch": 0, "eval_freq": 1, "print_freq": 0},
    }
    train = {**preset["train"], **sections.pop("train", {})}
    preset.update(sections)
    preset["train"] = train
    return preset


def classification_spec(
    name: str,
    description: str,
    *,
    read: Callable,
    transform: Callable,
    size: int,
    loader: tuple[int, int, int],
    default_root: str | None = None,
    **sections: Any,
) -> DatasetSpec:
    """A classification :class:`DatasetSpec` whose preset is :func:`classification_preset`.

    Args:
        size: the image side (``data.height`` = ``data.width``).
        loader: ``(data.batch_size, data.test_batch_size, data.workers)``.
        **sections: the recipe's sections; ``data`` (e.g. its root) is merged over the
            size and loader keys.
    """
    batch_size, test_batch_size, workers = loader
    data = {
        "root": None,
        "height": size,
        "width": size,
        "batch_size": batch_size,
        "test_batch_size": test_batch_size,
        "workers": workers,
    }
    data.update(sections.pop("data", {}))
    return DatasetSpec(
        name=name,
        task="classification",
        description=description,
        preset=classification_preset(data=data, **sections),
        read=read,
        transform=transform,
        default_root=default_root,
    )
