"""Identity and camera labels as the image file names spell them.

torchreid's data sets count cameras from 0 (``0198_c2s1_...`` has ``camid`` 1) while
the file names, ``reid-dhm retrieve`` and a person looking at the folder count them
from 1; every picture and report labels images as their file names do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.reid_datasets import NAME_PATTERN


def name_ids(path: str | os.PathLike) -> tuple[int, int] | None:
    """(identity, camera) from a Market-style file name (``0198_c2...`` -> (198, 2)), or
    None for a name that does not follow the layout."""
    match = NAME_PATTERN.match(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def image_label(path: str | os.PathLike, width: int = 14) -> str:
    """``'id 198 c2'`` from the file name, else the name's stem cut to ``width`` characters."""
    ids = name_ids(path)
    if ids is not None:
        return f"id {ids[0]} c{ids[1]}"
    stem = Path(path).stem
    return stem if len(stem) <= width else stem[: width - 1] + "\u2026"


def camera_names(paths: Sequence[str], camids: Sequence[int]) -> dict[int, str]:
    """``{camid: 'c<camera as in the file names>'}`` for every camera id in ``camids``.

    A camera id whose files do not all name one camera (a data set without Market-style
    names) keeps torchreid's own number, marked ``camid <n>``.
    """
    seen: dict[int, set] = {}
    for path, camid in zip(paths, camids):
        ids = name_ids(path)
        seen.setdefault(int(camid), set()).add(None if ids is None else ids[1])
    return {
        camid: (f"c{next(iter(cams))}" if len(cams) == 1 and None not in cams else f"camid {camid}")
        for camid, cams in sorted(seen.items())
    }


def merged_camera_names(*maps: Mapping[int, str]) -> dict[int, str]:
    """One ``{camid: name}`` over several splits; a disagreement falls back to ``camid``."""
    out: dict[int, str] = {}
    for names in maps:
        for camid, name in names.items():
            out[camid] = name if out.get(camid, name) == name else f"camid {camid}"
    return out


__all__ = ["camera_names", "image_label", "merged_camera_names", "name_ids"]
