"""Data-set presets (config sections over the defaults) and the data-set name lists.

They come from the data-set registry (``reid_dhm.data.registry``): each data set's file
states its task and preset, so a new data set is one file and nothing here changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _from_registry() -> tuple[dict[str, Mapping[str, Any]], tuple[str, ...], tuple[str, ...]]:
    """``({name: preset}, re-ID names, classification names)`` from the registry."""
    from ..data.registry import get_dataset, list_datasets

    presets = {}
    for name in list_datasets():
        spec = get_dataset(name)
        preset = dict(spec.preset)
        if spec.task != "reid":
            preset.setdefault("task", spec.task)  # the task is the data set's, not a key to set
        presets[name] = preset
    return presets, list_datasets("reid"), list_datasets("classification")


PRESETS, REID_DATASETS, CLASSIFICATION_DATASETS = _from_registry()
