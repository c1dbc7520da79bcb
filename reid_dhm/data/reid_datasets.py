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

from PIL import Image, UnidentifiedImageError
from torchreid.reid.data.datasets.dataset import ImageDataset

from .preprocessing import IMAGE_EXTENSIONS, read_image

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")


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
    return pid, cam


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image (empty, not an image, cut short), or None.

    The header is parsed, and a JPEG or PNG must end with its end marker (JPEG EOI,
    PNG IEND): a half-written file (a copy or download cut short) does not. Other
    formats are decoded in full. Measured on synthreid's 128x64 JPEGs: about 0.10 ms a
    file (the header alone: 0.085 ms), against 0.32 ms to decode it
    (``benchmarks/bench_image_check.py``).
    """
    try:
        with Image.open(path) as img:
            fmt = img.format
            if fmt not in ("JPEG", "PNG"):
                img.load()
                return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return str(err).split("\n")[0] or type(err).__name__
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 32))
        tail = f.read()
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated (no JPEG end marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated (no PNG end chunk)"
    return None


def scan_split(
    folder: Path, relabel: bool, skip_bad_images: bool = False, bad: list | None = None
) -> list[tuple[str, int, int]]:
    """(path, pid, camid 0-based) for every image in ``folder``; junk (pid -1) dropped.

    Files are sorted so relabelled training ids are the same on every machine. Every
    kept file is checked (``image_problem``), so a broken gallery image fails before
    training, not at the evaluation hours later. All bad files are reported at once
    (one line: their count and names); with ``skip_bad_images`` they are left out with
    a warning listing them instead. With a ``bad`` list, bad files are appended to it
    (as ``'<folder>/<name> (<why>)'``) and left out, and the caller reports them.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder {folder}")
    collect = bad is not None
    items, bad = [], ([] if bad is None else bad)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        pid, cam = parse_name(path)
        if pid == -1:
            continue  # junk images are ignored, as in Market-1501's protocol
        problem = image_problem(path)
        if problem:
            bad.append(f"{folder.name}/{path.name} ({problem})")
            continue
        items.append((str(path), pid, cam - 1))
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
        raise ValueError(
            f"cannot read image files in {where}: {len(bad)} unreadable: {shown}. Replace or "
            "remove them, or set data.skip_bad_images=true to leave them out"
        )
    warnings.warn(
        f"leaving out {len(bad)} unreadable image(s) in {where} (data.skip_bad_images): "
        + "; ".join(bad),
        stacklevel=3,
    )


class MarketLayoutDataset(ImageDataset):
    """Any folder in the Market-1501 layout, as a torchreid ``ImageDataset``.

    Args:
        root: the folder holding ``bounding_box_train``, ``bounding_box_test``, ``query``.
        **kwargs: torchreid's ``ImageDataset`` arguments (``transform``, ``mode``, ...).
    """

    skip_bad_images = False  # set on the classes registered by register_torchreid_datasets

    def __init__(self, root: str = "", **kwargs):
        folder = Path(root).expanduser()
        missing = [s for s in SPLITS.values() if not (folder / s).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a Market-1501-layout folder (missing {', '.join(missing)}): "
                f"expected {layout_help(folder)}"
            )
        self.dataset_dir = str(folder)
        bad: list[str] = []  # every split is scanned, then every bad file reported at once
        train = scan_split(folder / SPLITS["train"], relabel=True, bad=bad)
        query = scan_split(folder / SPLITS["query"], relabel=False, bad=bad)
        gallery = scan_split(folder / SPLITS["gallery"], relabel=False, bad=bad)
        report_bad_images(bad, folder, self.skip_bad_images)
        for split, items in (("train", train), ("query", query), ("gallery", gallery)):
            if not items:
                raise ValueError(f"no images in {folder / SPLITS[split]}")
        super().__init__(train, query, gallery, **kwargs)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid, dsetid = self.data[index]
        img = read_image(path)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {"img": img, "pid": pid, "camid": camid, "impath": path, "dsetid": dsetid}


# (registry name, skip_bad_images) -> its class: one class per pair in a process.
_CLASSES: dict[tuple[str, bool], type] = {}


def _subclass(name: str, resolve, skip_bad_images: bool = False) -> type:
    """A MarketLayoutDataset whose ``root`` argument is torchreid's data root."""
    key = (name, bool(skip_bad_images))
    if key in _CLASSES:
        return _CLASSES[key]

    def __init__(self, root: str = "", **kwargs):
        MarketLayoutDataset.__init__(self, str(resolve(root)), **kwargs)

    def __reduce__(self):
        # The class is made at run time, so pickle cannot find it by name: loader
        # workers started by spawn or forkserver (macOS, Windows, a process that was
        # itself spawned, Python >= 3.14) rebuild it from the registry instead.
        return _rebuild_dataset, (name, bool(skip_bad_images)), self.__dict__

    cls = type(
        f"{name.title().replace('-', '')}Dataset",
        (MarketLayoutDataset,),
        {"__init__": __init__, "__reduce__": __reduce__, "skip_bad_images": skip_bad_images},
    )
    _CLASSES[key] = cls
    return cls


def _rebuild_dataset(name: str, skip_bad_images: bool):
    """An empty instance of registered data set ``name``'s class (pickle fills it in)."""
    from .registry import get_dataset

    cls = _subclass(name, get_dataset(name).locate, skip_bad_images)
    return cls.__new__(cls)


def registered_datasets(skip_bad_images: bool = False) -> dict[str, type]:
    """Our re-ID data-set names and classes for torchreid's factory, from the registry.

    ``market1501`` / ``dukemtmcreid`` keep torchreid's names but use our checked,
    download-free reader; each class finds its folder under torchreid's data root with
    its spec's ``locate`` (synthreid: ``<root>/synthreid``; folder: ``root`` itself).
    """
    from .registry import get_dataset, list_datasets

    return {
        name: _subclass(name, get_dataset(name).locate, skip_bad_images)
        for name in list_datasets("reid")
    }


def register_torchreid_datasets(
    names: Iterable[str] | None = None, skip_bad_images: bool = False
) -> list[str]:
    """Put our readers in torchreid's image-dataset factory (explicit call, idempotent).

    torchreid's ``register_image_dataset`` refuses existing names, so the factory dict
    is updated directly; this replaces torchreid's downloading Market-1501 and
    DukeMTMC-reID readers with ours for the data manager.
    """
    import torchreid.reid.data.datasets as trdata

    factory = vars(trdata)["__image_datasets"]
    ours = registered_datasets(skip_bad_images)
    names = list(ours) if names is None else list(names)
    for name in names:
        if name not in ours:
            raise ValueError(f"unknown dataset {name!r}; valid names are {sorted(ours)}")
        factory[name] = ours[name]
    return names
