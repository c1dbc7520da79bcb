"""Re-ID image data sets in the Market-1501 folder layout, for torchreid's data manager.

torchreid's own ``Market1501`` asserts 0 <= pid <= 1501 and 1 <= camid <= 6, retries
unreadable images forever, and downloads when its folder is missing. These classes
read any Market-layout folder (any pid >= -1, any camera >= 1), fail with a clear
message naming the file or folder at fault, and never download anything.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from torchreid.reid.data.datasets.dataset import ImageDataset

from ..utils.images import (  # noqa: F401 - image_problem: this module's name for the check
    LARGE_IMAGE_PIXELS,
    image_problem,
    inspect_image,
    large_image_note,
    read_image,
)
from ..utils.options import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
from .preprocessing import IMAGE_EXTENSIONS

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
INT64_MAX = 2**63 - 1


def layout_help(folder: Path) -> str:
    return (
        f"{folder}/bounding_box_train, {folder}/bounding_box_test and {folder}/query holding "
        "images named like 0002_c1s1_000451_01.jpg (pid 4 digits, then _c<camera>)"
    )


def resolve_published(name: str, root: str | Path, folder: str, inner: str, origin: str) -> Path:
    """The split-holding folder of a published data set under ``root``, or a clear error.

    Args:
        name: the data set's registry name (for the message).
        root: torchreid's data root.
        folder: the data set's folder under ``root``; ``inner``: the folder its archive
            unpacks to inside it (either may hold the splits).
        origin: where the data set comes from, for the message (nothing is downloaded).
    """
    base = Path(root).expanduser() / folder
    for candidate in (base / inner, base):
        if all((candidate / s).is_dir() for s in SPLITS.values()):
            return candidate
    raise FileNotFoundError(
        f"{name} not found under --root {root}: expected {layout_help(base / inner)} "
        f"(or the same folders directly in {base}). The data set is {origin}; download and "
        "unpack it yourself, nothing is downloaded here."
    )


def parse_name(path: Path) -> tuple[int, int]:
    """(pid, camera) from a Market-style file name; camera is 1-based here."""
    match = NAME_PATTERN.match(path.name)
    if match is None:
        raise ValueError(
            f"{path}: file name does not follow the Market-1501 layout "
            "(<pid>_c<camera>..., e.g. 0002_c1s1_000451_01.jpg)"
        )
    pid, cam = int(match.group(1)), int(match.group(2))
    if pid < -1 or cam < 1:
        raise ValueError(f"{path}: pid must be >= -1 and camera >= 1, got pid {pid}, camera {cam}")
    if max(pid, cam) > INT64_MAX:  # labels are int64 tensors: found here, not at the evaluation
        raise ValueError(
            f"{path}: pid {pid} / camera {cam} does not fit a 64-bit integer (at most "
            f"{INT64_MAX}); rename the file with a smaller number"
        )
    return pid, cam


def scan_split(
    folder: Path,
    relabel: bool,
    skip_bad_images: bool = False,
    bad: list | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    large: list | None = None,
) -> list[tuple[str, int, int]]:
    """(path, pid, camid 0-based) for every image in ``folder``; junk (pid -1) dropped.

    Files are sorted so relabelled training ids are the same on every machine. Every
    kept file is checked (``inspect_image``: header, size against ``max_pixels``, end
    marker), so a broken gallery image fails before training, not at the evaluation
    hours later. All bad files are reported at once (one line: their count and names);
    with ``skip_bad_images`` they are left out with a warning listing them instead.
    With a ``bad`` list, bad files are appended to it (as ``'<folder>/<name> (<why>)'``)
    and left out, and the caller reports them; likewise allowed images over PIL's own
    limit go to ``large`` (else a warning names them).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder {folder}")
    collect = bad is not None
    items, bad = [], ([] if bad is None else bad)
    large_here: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        pid, cam = parse_name(path)
        if pid == -1:
            continue  # junk images are ignored, as in Market-1501's protocol
        problem, size = inspect_image(path, max_pixels)
        if problem:
            bad.append(f"{folder.name}/{path.name} ({problem})")
            continue
        if size[0] * size[1] > LARGE_IMAGE_PIXELS:
            large_here.append(large_image_note(f"{folder.name}/{path.name}", size, max_pixels))
        items.append((str(path), pid, cam - 1))
    if large is not None:
        large.extend(large_here)
    else:
        report_large_images(large_here)
    if not collect:
        report_bad_images(bad, folder, skip_bad_images)
    if relabel:
        label = {pid: i for i, pid in enumerate(sorted({p for _, p, _ in items}))}
        items = [(path, label[pid], cam) for path, pid, cam in items]
    return items


def report_bad_images(bad: list[str], where: Path, skip: bool) -> None:
    """Fail with every bad file in one line, or (``skip``) warn with the whole list."""
    if not bad:
        return
    if not skip:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        # An over-limit image may be wanted: say which key allows it.
        raise_limit = any("max_image_pixels" in b for b in bad)
        raise ValueError(
            f"cannot read image files in {where}: {len(bad)} unreadable: {shown}. Replace or "
            "remove them, "
            + ("raise data.max_image_pixels, " if raise_limit else "")
            + "or set data.skip_bad_images=true to leave them out"
        )
    warnings.warn(
        f"leaving out {len(bad)} unreadable image(s) in {where} (data.skip_bad_images): "
        + "; ".join(bad),
        stacklevel=3,
    )


def report_large_images(notes: list[str]) -> None:
    """One warning naming every allowed image over PIL's own limit (they cost memory)."""
    if notes:
        warnings.warn("; ".join(notes), stacklevel=3)


def empty_split_message(folder: Path) -> str:
    """Why a split has no usable image: no image files, all junk, or junk and bad files."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        return f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"
    junk = sum(NAME_PATTERN.match(p.name).group(1) == "-1" for p in files)
    if junk == len(files):
        return (
            f"{folder}: its {junk} images are all junk (pid -1), which the Market-1501 "
            "protocol leaves out; it needs images of real identities (pid >= 0)"
        )
    return (
        f"no usable images in {folder}: of its {len(files)} images, {junk} are junk (pid -1) "
        f"and {len(files) - junk} were left out as unreadable"
    )


class MarketLayoutDataset(ImageDataset):
    """Any folder in the Market-1501 layout, as a torchreid ``ImageDataset``.

    Args:
        root: the folder holding ``bounding_box_train``, ``bounding_box_test``, ``query``.
        **kwargs: torchreid's ``ImageDataset`` arguments (``transform``, ``mode``, ...).
    """

    # Set on the classes registered by register_torchreid_datasets.
    skip_bad_images = False
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(self, root: str = "", **kwargs):
        folder = Path(root).expanduser()
        missing = [s for s in SPLITS.values() if not (folder / s).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a Market-1501-layout folder (missing {', '.join(missing)}): "
                f"expected {layout_help(folder)}"
            )
        self.dataset_dir = str(folder)
        # Every split is scanned, then every bad (or large) file reported at once.
        bad: list[str] = []
        large: list[str] = []
        splits = {
            split: scan_split(folder / name, split == "train", bad=bad,
                              max_pixels=self.max_image_pixels, large=large)
            for split, name in SPLITS.items()
        }  # fmt: skip
        report_bad_images(bad, folder, self.skip_bad_images)
        report_large_images(large)
        for split, items in splits.items():
            if not items:
                raise ValueError(empty_split_message(folder / SPLITS[split]))
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid, dsetid = self.data[index]
        # Large images were named once at load; no warning every epoch.
        img = read_image(path, self.max_image_pixels, warn_large=False)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {"img": img, "pid": pid, "camid": camid, "impath": path, "dsetid": dsetid}


# (registry name, skip_bad_images, max_image_pixels) -> its class, one per key a process.
_CLASSES: dict[tuple[str, bool, int], type] = {}


def _subclass(
    name: str,
    resolve,
    skip_bad_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> type:
    """A MarketLayoutDataset whose ``root`` argument is torchreid's data root."""
    key = (name, bool(skip_bad_images), int(max_image_pixels))
    if key in _CLASSES:
        return _CLASSES[key]

    def __init__(self, root: str = "", **kwargs):
        MarketLayoutDataset.__init__(self, str(resolve(root)), **kwargs)

    def __reduce__(self):
        # The class is made at run time, so pickle cannot find it by name: loader
        # workers started by spawn or forkserver (macOS, Windows, a process that was
        # itself spawned, Python >= 3.14) rebuild it from the registry instead.
        return _rebuild_dataset, key, self.__dict__

    cls = type(
        f"{name.title().replace('-', '')}Dataset",
        (MarketLayoutDataset,),
        {"__init__": __init__, "__reduce__": __reduce__, "skip_bad_images": key[1],
         "max_image_pixels": key[2]},
    )  # fmt: skip
    _CLASSES[key] = cls
    return cls


def _rebuild_dataset(
    name: str, skip_bad_images: bool, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
):
    """An empty instance of registered data set ``name``'s class (pickle fills it in)."""
    from .registry import get_dataset

    cls = _subclass(name, get_dataset(name).locate, skip_bad_images, max_image_pixels)
    return cls.__new__(cls)


def registered_datasets(
    skip_bad_images: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> dict[str, type]:
    """Our re-ID data-set names and classes for torchreid's factory, from the registry.

    ``market1501`` / ``dukemtmcreid`` keep torchreid's names but use our checked,
    download-free reader; each class finds its folder under torchreid's data root with
    its spec's ``locate`` (synthreid: ``<root>/synthreid``; folder: ``root`` itself).
    """
    from .registry import get_dataset, list_datasets

    return {
        name: _subclass(name, get_dataset(name).locate, skip_bad_images, max_image_pixels)
        for name in list_datasets("reid")
    }


def register_torchreid_datasets(
    names: Iterable[str] | None = None,
    skip_bad_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[str]:
    """Put our readers in torchreid's image-dataset factory (explicit call, idempotent).

    torchreid's ``register_image_dataset`` refuses existing names, so the factory dict
    is updated directly; this replaces torchreid's downloading Market-1501 and
    DukeMTMC-reID readers with ours for the data manager. ``skip_bad_images`` and
    ``max_image_pixels``: as ``data.skip_bad_images`` / ``data.max_image_pixels``.
    """
    import torchreid.reid.data.datasets as trdata

    MAX_IMAGE_PIXELS.check(max_image_pixels, "data.max_image_pixels")
    factory = vars(trdata)["__image_datasets"]
    ours = registered_datasets(skip_bad_images, max_image_pixels)
    names = list(ours) if names is None else list(names)
    for name in names:
        if name not in ours:
            raise ValueError(f"unknown dataset {name!r}; valid names are {sorted(ours)}")
        factory[name] = ours[name]
    return names
