"""Any folder in the Market-1501 layout: the user's own re-ID data."""

from __future__ import annotations

import os
from pathlib import Path

from ..registry import DatasetSpec


def locate(root: str | os.PathLike) -> Path:
    """The data root is the Market-layout folder itself."""
    return Path(root).expanduser()


def prepare(root: str | os.PathLike, generator=None) -> Path:
    """The folder, once it is known to exist (its splits are checked when it is read)."""
    folder = locate(root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--root {folder} does not exist; the folder dataset needs a Market-1501-layout "
            "folder (bounding_box_train/, bounding_box_test/, query/)"
        )
    return folder


SPECS = (
    DatasetSpec(
        name="folder",
        task="reid",
        description="a Market-1501-layout folder (--root is the folder itself)",
        preset={},
        locate=locate,
        prepare=prepare,
    ),
)
