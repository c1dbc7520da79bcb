"""A published re-ID benchmark unpacked under the data root (Market-1501, DukeMTMC-reID)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..registry import DatasetSpec


def _locate(name: str, folder: str, inner: str, origin: str, root: str | os.PathLike) -> Path:
    from ..reid_datasets import resolve_published  # PIL / torchreid: only when read

    return resolve_published(name, root, folder, inner, origin)


def published_reid_spec(
    name: str, description: str, *, folder: str, inner: str, origin: str
) -> DatasetSpec:
    """The spec of a published benchmark found at ``<root>/<folder>[/<inner>]``.

    Args:
        folder: its folder under the data root; ``inner``: the folder its archive
            unpacks to inside it (the splits may sit in either).
        origin: where users get it (named in the error; nothing is downloaded).
    """
    return DatasetSpec(
        name=name,
        task="reid",
        description=description,
        preset={},  # the defaults are the paper's Market-1501 / DukeMTMC-reID recipe
        locate=partial(_locate, name, folder, inner, origin),
    )
