"""Classification readers on small data generated in each data set's real on-disk format."""

import ast
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import reid_dhm.data.classification as cls
from reid_dhm.data.classification import (
    build_classification_datasets,
    read_cifar,
    read_fashion_mnist,
    read_idx,
)
from reid_dhm.data.registry import get_dataset

FASHION_MNIST_ROOT = Path(get_dataset("fashion-mnist").default_root)


# ----------------------------------------------------------------- CIFAR generators
def _cifar_images(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows: channel-major planes, as in the real pickles."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> None:
    # The real files are Python 2 cPickles: bytes keys, protocol 2.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        data = _cifar_images(per_batch, i)
        data[0, :1024], data[0, 1024:] = 255, 0  # first image of each batch: pure red
        _dump(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": [(i + j) % 10 for j in range(per_batch)],
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": list(range(n_test)),
            b"data": _cifar_images(n_test, 99),
            b"filenames": [f"t{j}.png".encode() for j in range(n_test)],
        },
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names})
    return folder


def make_cifar100(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        _dump(
            folder / split,
            {
                b"filenames": [f"{split}{j}.png".encode() for j in range(n)],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": [(17 * j) % 100 for j in range(n)],
                b"coarse_labels": [j % 20 for j in range(n)],
                b"data": _cifar_images(n, len(split)),
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return folder


@pytest.fixture
def cifar10_root(tmp_path):
    make_cifar10(tmp_path)
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path):
    make_cifar100(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------- CIFAR
def test_cifar10_real_layout_through_the_loader(cifar10_root):
    train, test, num_classes = build_classification_datasets("cifar10", cifar10_root)
    assert (len(train), len(test), num_classes) == (15, 4, 10)
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.targets[:3] == [1, 2, 3] and test.targets == [0, 1, 2, 3]
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    # Test transform is deterministic normalisation of the raw pixels.
    raw = read_cifar("cifar10", cifar10_root, train=False)[0][2]
    mean, std = torch.tensor(cls.CIFAR10_MEAN), torch.tensor(cls.CIFAR10_STD)
    expected = (torch.from_numpy(raw).permute(2, 0, 1) / 255 - mean[:, None, None]) / std[
        :, None, None
    ]
    torch.testing.assert_close(test[2][0], expected)
    batch, labels = next(iter(DataLoader(train, batch_size=4)))
    assert batch.shape == (4, 3, 32, 32) and labels.tolist() == [1, 2, 3, 2]


def test_cifar_pixels_keep_channel_order(cifar10_root):
    images, labels, _ = read_cifar("cifar10", cifar10_root, train=True)
    assert images.shape == (15, 32, 32, 3) and images.dtype == np.uint8
    assert (images[0, ..., 0] == 255).all() and not images[0, ..., 1:].any()  # pure red
    rows = pickle.loads((cifar10_root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    np.testing.assert_array_equal(images[4].transpose(2, 0, 1).reshape(-1), rows[b"data"][1])
    assert labels.dtype == np.int64


def test_cifar100_fine_labels_and_training_augmentation(cifar100_root):
    train, test, num_classes = build_classification_datasets("cifar100", cifar100_root)
    assert (len(train), len(test), num_classes) == (6, 3, 100)
    assert train.targets == [0, 17, 34, 51, 68, 85] and train.classes[17] == "fine17"
    torch.manual_seed(0)
    views = torch.stack([train[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32)
    assert not all(torch.equal(views[0], v) for v in views[1:])  # random crop / flip at work


def test_cifar_folder_itself_and_limit(cifar100_root):
    folder = cifar100_root / "cifar-100-python"
    train, test, _ = build_classification_datasets("cifar100", folder, limit=3)
    assert len(train) == 3 and train.targets == [0, 34, 85]  # indices 0, 2, 5 of 6
    assert train.classes[0] == "fine0" and len(test) == 3


def test_missing_cifar_folder_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_classification_datasets("cifar100", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar-100-python") in message and "nothing is downloaded" in message


def test_missing_cifar_file(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.*nothing is downloaded"):
        build_classification_datasets("cifar10", cifar10_root)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.pop(b"fine_labels"), "train: missing key 'fine_labels'"),
        (lambda d: d.pop(b"data"), "train: missing key 'data'"),
        (lambda d: d.update({b"data": d[b"data"][:, :100]}), "shape \\(N, 3072\\)"),
        (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "must be uint8"),
        (lambda d: d.update({b"fine_labels": [0, 1]}), "must hold 6 integers"),
        (lambda d: d.update({b"fine_labels": [0, 1, 2, 3, 4, 100]}), "in \\[0, 99\\]"),
    ],
)
def test_wrong_cifar_pickle_layout(cifar100_root, change, match):
    path = cifar100_root / "cifar-100-python" / "train"
    entry = pickle.loads(path.read_bytes())
    change(entry)
    _dump(path, entry)
    with pytest.raises(ValueError, match=match) as err:
        build_classification_datasets("cifar100", cifar100_root)
    assert str(path) in str(err.value)


def test_cifar10_pickle_is_not_cifar100(cifar100_root, cifar10_root):
    # A CIFAR-10 batch has 'labels', not 'fine_labels'.
    target = cifar100_root / "cifar-100-python" / "test"
    target.write_bytes((cifar10_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    with pytest.raises(ValueError, match="missing key 'fine_labels'"):
        build_classification_datasets("cifar100", cifar100_root)


def test_bad_meta_and_non_pickle_files(cifar10_root):
    folder = cifar10_root / "cifar-10-batches-py"
    _dump(folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(ValueError, match="batches.meta.*10 class names"):
        build_classification_datasets("cifar10", cifar10_root)
    (folder / "batches.meta").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="batches.meta: not a CIFAR python pickle"):
        build_classification_datasets("cifar10", cifar10_root)
    _dump(folder / "batches.meta", [1, 2, 3])
    with pytest.raises(ValueError, match="expected a pickled dict"):
        build_classification_datasets("cifar10", cifar10_root)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_pickles_cannot_run_code(cifar100_root, tmp_path):
    _Evil.target = str(tmp_path / "pwned")
    path = cifar100_root / "cifar-100-python" / "meta"
    with open(path, "wb") as f:
        pickle.dump({b"fine_label_names": _Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        build_classification_datasets("cifar100", cifar100_root)
    assert not (tmp_path / "pwned").exists()


# -------------------------------------------------------------------- Fashion-MNIST
def _idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_fashion_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


def test_fashion_mnist_gz_idx_through_the_loader(tmp_path):
    make_fashion_mnist(tmp_path)
    train, test, num_classes = build_classification_datasets("fashion-mnist", tmp_path)
    assert (len(train), len(test), num_classes) == (20, 10, 10)
    assert train.classes[9] == "Ankle boot" and test.targets == list(range(10))
    image, label = train[3]
    assert image.shape == (3, 28, 28) and label == 3
    torch.testing.assert_close(image[0], image[2])  # grey repeated to 3 channels
    raw = read_fashion_mnist(tmp_path, train=False)[0][1]
    expected = (torch.from_numpy(raw).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(test[1][0][1], expected)
    resized = build_classification_datasets("fashion-mnist", tmp_path, image_size=32)[1]
    assert resized[0][0].shape == (3, 32, 32)


def test_fashion_mnist_uncompressed_idx(tmp_path):
    make_fashion_mnist(tmp_path, gz=False)
    images, labels, _ = read_fashion_mnist(tmp_path, train=True)
    assert images.shape == (20, 28, 28) and labels.tolist() == [i % 10 for i in range(20)]


def test_read_idx_validates_magic_and_size(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 3, 4)), magic_type=0x0D)))
    with pytest.raises(ValueError, match="x-idx3-ubyte.gz: bad idx magic number 00000d03"):
        read_idx(path)
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 3, 4)))[:-5]))
    with pytest.raises(ValueError, match="header says shape \\(2, 3, 4\\)"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="x-idx3-ubyte.gz: unreadable gzip"):
        read_idx(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="bad idx magic number \\(empty\\)"):
        read_idx(path)


def test_fashion_mnist_bad_and_missing_files(tmp_path):
    make_fashion_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.arange(9) % 10)))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: expected 10 labels"):
        build_classification_datasets("fashion-mnist", tmp_path)
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"garbage"))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        build_classification_datasets("fashion-mnist", tmp_path)
    labels.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_classification_datasets("fashion-mnist", tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert "nothing is downloaded" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_debian_fashion_mnist():
    train, test, num_classes = build_classification_datasets("fashion-mnist")
    assert (len(train), len(test), num_classes) == (60000, 10000, 10)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert train[0][0].shape == (3, 28, 28)


# ------------------------------------------------------------------------- ImageNet
def make_imagefolder(root: Path, classes=("n01440764", "n01443537"), per_class: int = 2):
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                color = (40 * c, 200 - 50 * i, 90)
                ext = "JPEG" if i % 2 == 0 else "png"
                Image.new("RGB", (48 + 8 * i, 36), color).save(folder / f"{wnid}_{i}.{ext}")


def test_imagenet_folder_layout(tmp_path):
    make_imagefolder(tmp_path)
    train, val, num_classes = build_classification_datasets("imagenet", tmp_path, image_size=64)
    assert (len(train), len(val), num_classes) == (4, 4, 2)
    assert train.classes == ["n01440764", "n01443537"] and val.targets == [0, 0, 1, 1]
    assert train[1][0].shape == (3, 64, 64) and val[3][1] == 1
    full = build_classification_datasets("imagenet", tmp_path)[1]
    assert full[0][0].shape == (3, 224, 224)  # resize 256, center crop 224
    limited = build_classification_datasets("imagenet", tmp_path, image_size=32, limit=2)[0]
    assert limited.targets == [0, 1]  # evenly spaced: every class survives


def test_imagenet_missing_and_mismatched_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>/<image>.*nothing is downloaded"):
        build_classification_datasets("imagenet", tmp_path)
    make_imagefolder(tmp_path)
    (tmp_path / "val" / "n01443537").rename(tmp_path / "val" / "n99999999")
    with pytest.raises(ValueError, match="train/ and val/ class folders differ"):
        build_classification_datasets("imagenet", tmp_path)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders with images"):
        build_classification_datasets("imagenet", empty)


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="mnist", root="."), "unknown classification dataset 'mnist'"),
        (dict(name="cifar100"), "root is required for 'cifar100'"),
        (dict(name="cifar10", root=".", limit=0), "limit must be"),
        (dict(name="cifar10", root=".", image_size=64), "CIFAR images are 32x32"),
        (dict(name="fashion-mnist", root=".", image_size=True), "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_classification_datasets(**kwargs)


def test_data_code_imports_no_models_engines_or_tools():
    tree = ast.parse(Path(cls.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.startswith(("reid_dhm", "tools", "."))]


@pytest.mark.parametrize("size, resize", [(224, 256), (160, 183), (288, 329)])
def test_imagenet_evaluation_resize_keeps_the_crop_ratio(size, resize):
    from reid_dhm.data.classification import default_transform

    resize_step, crop = default_transform("imagenet", False, size).transforms[:2]
    assert resize_step.size == resize and crop.size == (size, size)
