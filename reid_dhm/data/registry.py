"""The data-set registry: every data set's name, task, preset and reader, in one place.

Each module of :mod:`reid_dhm.data.sets` declares its data sets in a ``SPECS`` tuple of
:class:`DatasetSpec`; the registry walks that package on first use, so a new data set is
one file there and nothing else. Every name list (the config presets, the re-ID and
classification choices, torchreid's factory entries) derives from here.

This module and the set files import no torch at import time: reading a YAML config
must stay light. Readers import what they need when they are called.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("reid", "classification")


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: what it is, its recipe, and how its reader gets at it.

    Attributes:
        name: the ``data.dataset`` value, e.g. ``'market1501'``.
        task: one of :data:`TASKS`.
        description: one line for listings and docs.
        preset: config sections over the defaults for this data set (the recipe); the
            task is not repeated there (``task`` states it).
        locate: re-ID: torchreid's data root -> the folder holding
            ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` (what the
            torchreid dataset class reads).
        prepare: re-ID, optional: ``prepare(root, generator) -> folder``, checking (or,
            for a generated data set, writing) the data before training; ``generator``
            carries a generated data set's settings (``SynthReIDSpec`` for synthreid).
            Left out, :meth:`prepare_folder` is ``locate``.
        read: classification: ``read(root, train_transform, test_transform) ->
            (train, test)`` datasets yielding ``(image (3, H, W), label)``.
        transform: classification: ``transform(train, image_size) -> callable``, the
            default augmentation (``image_size`` None = the data set's own size).
        default_root: classification, optional: the folder used when none is given.
    """

    name: str
    task: str
    description: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    locate: Callable[[str | os.PathLike], Path] | None = None
    prepare: Callable[[str | os.PathLike, Any], Path] | None = None
    read: Callable[..., tuple[Any, Any]] | None = None
    transform: Callable[[bool, int | None], Callable] | None = None
    default_root: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"data set {self.name!r}: unknown task {self.task!r}; tasks are {list(TASKS)}"
            )
        if "task" in self.preset:
            raise ValueError(f"data set {self.name!r}: state the task in task=, not in preset")
        needed = ("locate",) if self.task == "reid" else ("read", "transform")
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.task} data set {self.name!r} needs {missing[0]}=...")

    def prepare_folder(self, root: str | os.PathLike, generator: Any = None) -> Path:
        """Re-ID: check (or generate) the data under ``root``; its split-holding folder."""
        if self.prepare is not None:
            return self.prepare(root, generator)
        return self.locate(root)


_REGISTRY: dict[str, DatasetSpec] = {}
_DISCOVERED = False


def _builtin_specs() -> Iterator[DatasetSpec]:
    """Every ``SPECS`` entry of the modules in :mod:`reid_dhm.data.sets`."""
    from . import sets

    for info in sorted(pkgutil.iter_modules(sets.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):  # _shared helpers declare nothing
            module = importlib.import_module(f"{sets.__name__}.{info.name}")
            yield from getattr(module, "SPECS", ())


def _registry() -> dict[str, DatasetSpec]:
    """The registry, with the built-in data sets found on first use.

    Lazy because the set modules import this one (for :class:`DatasetSpec`); it also runs
    before any ``register_dataset``, so a user's data set can never take a built-in name.
    """
    global _DISCOVERED
    if not _DISCOVERED:
        found = list(_builtin_specs())  # all or nothing: a failed import adds none
        _DISCOVERED = True
        for spec in found:
            register_dataset(spec)
    return _REGISTRY


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a data set; a name that is taken raises ``ValueError``. Returns ``spec``.

    Name lists computed at import (``config.PRESETS``, ``reid_manager.REID_DATASETS``)
    see a data set registered here only if it is registered before those modules are
    imported; a file in :mod:`reid_dhm.data.sets` is always seen.
    """
    registry = _registry()
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset expects a DatasetSpec, got {type(spec).__name__}")
    if spec.name in registry:
        raise ValueError(f"data set name {spec.name!r} is already registered")
    registry[spec.name] = spec
    return spec


def list_datasets(task: str | None = None) -> tuple[str, ...]:
    """Registered data-set names (of one task, if given), sorted."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {list(TASKS)}")
    return tuple(sorted(n for n, s in _registry().items() if task in (None, s.task)))


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ``ValueError`` naming the valid ones if unknown."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown dataset {name!r}; valid datasets are {list(list_datasets())}")
    return registry[name]


__all__ = ["TASKS", "DatasetSpec", "get_dataset", "list_datasets", "register_dataset"]
