"""Image-classification data: CIFAR-10/100, ImageNet and Fashion-MNIST readers.

Each reader takes the data set's standard on-disk format and never downloads:

* CIFAR-10 / CIFAR-100: the python-pickle folders ``cifar-10-batches-py/``
  (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) and
  ``cifar-100-python/`` (``train``, ``test``, ``meta``) from
  https://www.cs.toronto.edu/~kriz/cifar.html. Pickles are read with an unpickler
  that only admits numpy arrays and builtins, so a tampered file cannot run code.
* ImageNet: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the usual layout after
  sorting the validation images into class folders), read with torchvision's
  ``ImageFolder``.
* Fashion-MNIST: the four gzip'ed idx files that Debian's ``dataset-fashion-mnist``
  package installs in ``/usr/share/datasets/fashion-mnist`` (uncompressed idx files
  with the same names work too), parsed here with numpy.

Augmentations follow the paper (section 4.1): CIFAR zero-pads 4 pixels, takes a
random 32x32 crop and a random horizontal flip, then normalises with the data set's
own per-channel mean and std; ImageNet uses RandomResizedCrop(224) + flip for
training and resize 256 / center-crop 224 for evaluation (other sizes keep that
ratio: resize round(size / 0.875)). Fashion-MNIST gets the CIFAR recipe at its
native 28x28 (pad 4, crop 28, flip) and its single channel is repeated to 3 so that
every model takes (B, 3, H, W); the CIFAR models pool adaptively, so 28x28 needs no
resizing (``image_size=32`` resizes if wanted).

Every dataset yields ``(image, label)``: a float tensor (3, H, W) and an int.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from ..utils.images import read_image
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .registry import DatasetSpec, get_dataset, list_datasets

# The registry's classification data sets (reid_dhm/data/sets/), under their old name.
DATASETS = list_datasets("classification")

# Per-channel pixel mean / std of each training set, on [0, 1] intensities.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# name -> (folder, train files, test files, meta file, label key, meta key, classes)
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
    ),
}
_FASHION_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------- datasets
class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 arrays.

    Args:
        images: (N, H, W, 3) RGB or (N, H, W) grayscale, dtype uint8.
        labels: (N,) integer class indices.
        classes: class names, index = label.
        transform: PIL image -> tensor (3, H', W'); ``None`` gives the uint8 tensor
            (C, H, W) unchanged, grayscale as one channel.

    Attributes ``targets`` (list of int) and ``classes`` mirror torchvision's datasets.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        array = self.images[index]
        label = int(self.labels[index])
        if self.transform is None:
            tensor = torch.from_numpy(np.array(array))  # a copy: callers may write to it
            return (tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)), label
        return self.transform(Image.fromarray(array)), label


class RepeatChannels:
    """(1, H, W) -> (channels, H, W) by repetition (grayscale data for RGB models)."""

    def __init__(self, channels: int = 3):
        self.channels = channels

    def __call__(self, x: Tensor) -> Tensor:
        return x.repeat(self.channels, 1, 1) if x.shape[0] == 1 else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


# ------------------------------------------------------------------------ transforms
def cifar_transform(name: str, train: bool) -> Callable:
    """CIFAR: train = pad 4 + random crop 32 + flip + normalize; test = normalize only."""
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


# Evaluation center-crops this fraction of the resized image's shorter side (224 of 256).
IMAGENET_CROP_FRACTION = 0.875


def imagenet_transform(train: bool, size: int = 224, resize: int | None = None) -> Callable:
    """ImageNet: train = RandomResizedCrop(size) + flip; eval = resize + center crop.

    ``resize`` (the evaluation's shorter side) defaults to ``round(size / 0.875)``: 256
    for 224, so a center crop covers the same part of the image at any ``size``.
    """
    if resize is None:
        resize = round(size / IMAGENET_CROP_FRACTION)
    steps = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if train
        else [T.Resize(resize), T.CenterCrop(size)]
    )
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def fashion_mnist_transform(train: bool, image_size: int = 28) -> Callable:
    """Fashion-MNIST: (resize,) pad 4 + random crop + flip for training; 1 -> 3 channels.

    Output: (3, image_size, image_size), normalised with the training set's mean/std.
    """
    steps = [] if image_size == 28 else [T.Resize(image_size)]
    if train:
        steps += [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
    return T.Compose(
        [*steps, T.ToTensor(), T.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD), RepeatChannels()]
    )


def default_transform(name: str, train: bool, image_size: int | None = None) -> Callable:
    """The paper's augmentation for data set ``name`` (one of :data:`DATASETS`)."""
    return _spec(name).transform(train, image_size)


def cifar_default_transform(name: str, train: bool, image_size: int | None = None) -> Callable:
    """:func:`cifar_transform`, refusing sizes other than CIFAR's own 32x32."""
    if image_size not in (None, 32):
        raise ValueError(f"CIFAR images are 32x32; image_size={image_size!r} is not supported")
    return cifar_transform(name, train)


# --------------------------------------------------------------------------- CIFAR
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other class is refused."""

    _NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self._NUMPY) or (
            module == "_codecs" and name == "encode"  # how protocol-2 pickles store bytes
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"missing file {path} (expected the standard CIFAR python-pickle layout); "
            f"nothing is downloaded"
        )
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any unpickling failure is a bad file, named as such
        raise ValueError(f"{path}: not a CIFAR python pickle ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # CIFAR's pickles were written by Python 2: keys are bytes; accept str keys too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _get(entry: dict, key: str, path: Path):
    if key not in entry:
        raise ValueError(f"{path}: missing key {key!r} (found keys {sorted(entry)})")
    return entry[key]


def _read_cifar_batch(
    path: Path, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    entry = _load_pickle(path)
    data = np.asarray(_get(entry, "data", path))
    labels = np.asarray(_get(entry, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: {label_key!r} must hold {len(data)} integers, got shape {labels.shape} "
            f"of {labels.dtype}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: {label_key!r} values must be in [0, {num_classes - 1}], "
            f"got {labels.min()}..{labels.max()}"
        )
    # Rows are channel-major (1024 R, 1024 G, 1024 B), each plane row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _cifar_folder(name: str, root: Path) -> Path:
    folder_name, train_files, test_files, meta, *_ = _CIFAR[name]
    if (root / folder_name).is_dir():
        return root / folder_name
    if root.name == folder_name or (root / meta).is_file():  # given the folder itself
        return root
    files = ", ".join((*train_files, *test_files, meta))
    raise FileNotFoundError(
        f"{name} not found: expected {root / folder_name}/ with {files} (the python-pickle "
        f"version from https://www.cs.toronto.edu/~kriz/cifar.html); nothing is downloaded"
    )


def read_cifar(
    name: str, root: str | Path, train: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one CIFAR split from the python-pickle folder.

    Args:
        name: ``'cifar10'`` or ``'cifar100'`` (fine labels).
        root: the folder holding ``cifar-10-batches-py/`` / ``cifar-100-python/`` (or
            that folder itself).
        train: the training split (50k images) or the test split (10k).

    Returns:
        images (N, 32, 32, 3) uint8 RGB, labels (N,) int64, class names.
    """
    folder_name, train_files, test_files, meta_file, label_key, meta_key, num_classes = _CIFAR[name]
    folder = _cifar_folder(name, Path(root))
    meta_path = folder / meta_file
    names = _get(_load_pickle(meta_path), meta_key, meta_path)
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        raise ValueError(f"{meta_path}: {meta_key!r} must list {num_classes} class names")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    parts = [
        _read_cifar_batch(folder / f, label_key, num_classes)
        for f in (train_files if train else test_files)
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, classes


# --------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzip'ed or not) of unsigned bytes: the MNIST format.

    Layout: two zero bytes, a type byte (0x08 = uint8), a dimension count, the
    dimensions as big-endian uint32, then the data. Returns an array of that shape.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable gzip/idx file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] == 0:
        raise ValueError(
            f"{path}: bad idx magic number {raw[:4].hex() or '(empty)'}; expected 0000080N "
            f"(unsigned bytes, N dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path}: idx header says shape {shape} ({int(np.prod(shape))} bytes), "
            f"but {len(raw) - header} data bytes follow"
        )
    # A copy: frombuffer views are read-only, which torch.from_numpy warns about.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _fashion_file(root: Path, stem: str) -> Path:
    for folder in (root, root / "fashion-mnist"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    from .registry import get_dataset  # the data set's own file knows Debian's folder

    debian = get_dataset("fashion-mnist").default_root
    raise FileNotFoundError(
        f"Fashion-MNIST file not found: expected {root / (stem + '.gz')} (install Debian's "
        f"dataset-fashion-mnist for {debian}); nothing is downloaded"
    )


def read_fashion_mnist(root: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one Fashion-MNIST split from its idx files.

    Args:
        root: folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        train: the training split (60k) or the test split (10k).

    Returns:
        images (N, 28, 28) uint8, labels (N,) int64, the 10 class names.
    """
    root = Path(root)
    image_path, label_path = (_fashion_file(root, s) for s in _FASHION_FILES[train])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise ValueError(f"{image_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{label_path}: expected {len(images)} labels for {image_path.name}, "
            f"got shape {labels.shape}"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path}: labels must be in [0, 9], got max {labels.max()}")
    return images, labels.astype(np.int64), list(FASHION_MNIST_CLASSES)


# -------------------------------------------------------------------------- ImageNet
def _imagenet_split(root: Path, split: str, transform: Callable | None) -> ImageFolder:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet split not found: expected {folder}/<class>/<image> folders "
            f"(train/ and val/, val sorted into class folders); nothing is downloaded"
        )
    try:
        # Our reader (EXIF orientation, 16-bit grey, pixel limit), not torchvision's.
        return ImageFolder(str(folder), transform=transform, loader=read_image)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{folder}: no class folders with images ({err}); expected {folder}/<class>/<image>"
        ) from None


def read_imagenet(
    root: Path, train_transform: Callable | None, test_transform: Callable | None
) -> tuple[ImageFolder, ImageFolder]:
    """ImageNet's ``train/`` and ``val/`` class folders; both must name the same classes."""
    train = _imagenet_split(root, "train", train_transform)
    test = _imagenet_split(root, "val", test_transform)
    if train.classes != test.classes:
        missing = sorted(set(train.classes) ^ set(test.classes))
        raise ValueError(
            f"{root}: train/ and val/ class folders differ (e.g. {missing[:3]}); "
            f"both must hold the same class folders"
        )
    return train, test


def array_datasets(
    read_split: Callable[[bool], tuple[np.ndarray, np.ndarray, list[str]]],
    train_transform: Callable | None,
    test_transform: Callable | None,
) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """Both splits of an in-memory data set; ``read_split(train)`` gives one split's arrays."""
    train = ArrayImageDataset(*read_split(True), transform=train_transform)
    test = ArrayImageDataset(*read_split(False), transform=test_transform)
    return train, test


# --------------------------------------------------------------------------- builder
def _spec(name: str) -> DatasetSpec:
    """The registry's classification data set ``name``, or a ValueError naming them."""
    if name not in DATASETS:
        raise ValueError(f"unknown classification dataset {name!r}; valid names are {DATASETS}")
    return get_dataset(name)


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` samples, evenly spaced so class-sorted folders keep every class."""
    if limit is None or limit >= len(dataset):
        return dataset
    index = np.linspace(0, len(dataset) - 1, limit).round().astype(np.int64)
    subset = Subset(dataset, index.tolist())
    # Keep the attributes engines read (classes, targets) on the subset too.
    subset.classes = dataset.classes
    subset.targets = [dataset.targets[i] for i in index]
    return subset


def build_classification_datasets(
    name: str,
    root: str | Path | None = None,
    *,
    train_transform: Callable | None = None,
    test_transform: Callable | None = None,
    image_size: int | None = None,
    limit: int | None = None,
) -> tuple[Dataset, Dataset, int]:
    """Training and test datasets of one classification benchmark, with the paper's augmentation.

    Args:
        name: ``'cifar10'``, ``'cifar100'``, ``'imagenet'`` or ``'fashion-mnist'``.
        root: the data folder: holds ``cifar-10-batches-py/`` / ``cifar-100-python/``
            (CIFAR), ``train/`` and ``val/`` (ImageNet) or the idx ``*.gz`` files
            (Fashion-MNIST; default ``/usr/share/datasets/fashion-mnist``).
        train_transform, test_transform: override the default augmentations
            (:func:`default_transform`); they receive PIL images.
        image_size: output side for ImageNet (224) or Fashion-MNIST (28; 32 resizes).
        limit: keep at most this many samples per split (evenly spaced, deterministic)
            for quick runs.

    Returns:
        ``(train, test, num_classes)``; items are ``(image (3, H, W) float, label int)``.
        For ImageNet, ``test`` is the ``val/`` split.

    Raises:
        FileNotFoundError: the folder or a file is missing (nothing is ever downloaded).
        ValueError: unknown name, bad arguments, or a file with the wrong layout.
    """
    spec = _spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8
    ):
        raise ValueError(f"image_size must be an integer >= 8 or None, got {image_size!r}")
    if root is None:
        if spec.default_root is None:
            raise ValueError(f"root is required for {name!r} (the folder that holds its files)")
        root = spec.default_root
    root = Path(root)
    if train_transform is None:
        train_transform = spec.transform(True, image_size)
    if test_transform is None:
        test_transform = spec.transform(False, image_size)
    train, test = spec.read(root, train_transform, test_transform)
    return _limit(train, limit), _limit(test, limit), len(train.classes)


__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImageDataset",
    "RepeatChannels",
    "array_datasets",
    "build_classification_datasets",
    "cifar_default_transform",
    "cifar_transform",
    "default_transform",
    "fashion_mnist_transform",
    "imagenet_transform",
    "read_cifar",
    "read_fashion_mnist",
    "read_idx",
    "read_imagenet",
]
