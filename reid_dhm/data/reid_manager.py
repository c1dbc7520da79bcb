"""Build torchreid's ``ImageDataManager`` for our re-ID data sets, with checks up front.

Everything that would otherwise fail late (a missing folder, a batch larger than the
training set, query identities with no cross-camera match in the gallery, which
torchreid only reports at the end of training) fails here, before any training.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import defaultdict
from pathlib import Path

from torchreid.reid.data import ImageDataManager

from ..utils.checks import check_choice
from ..utils.options import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SAMPLERS,
    TRANSFORMS,
    check_identity_batch,
)
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .registry import get_dataset, list_datasets
from .reid_datasets import register_torchreid_datasets
from .synthreid import SynthReIDSpec

# The registry's re-ID data sets (reid_dhm/data/sets/), kept under the name tools import.
REID_DATASETS = list_datasets("reid")


def prepare_reid_dataset(
    name: str, root: str | Path, synthreid: SynthReIDSpec | None = None
) -> Path:
    """Check (or, for synthreid, generate) a data set; returns its split-holding folder."""
    reid = list_datasets("reid")
    if name not in reid:
        raise ValueError(f"unknown re-ID dataset {name!r}; valid datasets are {list(reid)}")
    return get_dataset(name).prepare_folder(root, synthreid)


def count_valid_queries(query, gallery) -> tuple[int, list[int]]:
    """Queries with at least one gallery image of the same pid from another camera.

    Returns:
        (number of valid queries, pids of the queries that have none).
    """
    cams_of = defaultdict(set)
    for item in gallery:
        cams_of[item[1]].add(item[2])
    valid, lonely = 0, []
    for item in query:
        if cams_of.get(item[1], set()) - {item[2]}:
            valid += 1
        else:
            lonely.append(item[1])
    return valid, lonely


def check_query_gallery(name: str, query, gallery) -> int:
    """Fail now, not after training, when evaluation would be empty; warn when partial."""
    valid, lonely = count_valid_queries(query, gallery)
    if valid == 0:
        raise ValueError(
            f"{name}: no query image has a gallery image of the same identity from another "
            f"camera ({len(query)} queries, {len(gallery)} gallery images); the Market-1501 "
            "protocol would have nothing to evaluate. Check the query/ and bounding_box_test/ "
            "file names (<pid>_c<camera>...)."
        )
    if lonely:
        warnings.warn(
            f"{name}: {len(lonely)} of {len(query)} queries have no cross-camera match in the "
            f"gallery (e.g. pid {lonely[0]}); they are skipped by the evaluation",
            stacklevel=2,
        )
    return valid


def check_identities(manager: ImageDataManager) -> None:
    """Refuse a training split of one identity: cross-entropy over a single class is 0
    from the first step, so the run would "train" to loss 0 and learn nothing."""
    if manager.num_train_pids >= 2:
        return
    train = manager.train_loader.dataset
    folder = Path(getattr(train, "dataset_dir", ".")) / "bounding_box_train"
    raise ValueError(
        f"{folder}: the training split has {len(train)} images of only "
        f"{manager.num_train_pids} identity; training needs at least 2 identities "
        "(file names <pid>_c<camera>... with 2 or more pids)"
    )


def build_reid_datamanager(
    dataset: str,
    root: str | Path,
    height: int = 256,
    width: int = 128,
    transforms=("random_flip", "random_crop"),
    norm_mean=IMAGENET_MEAN,
    norm_std=IMAGENET_STD,
    batch_size: int = 32,
    test_batch_size: int = 100,
    workers: int = 4,
    sampler: str = "random",
    num_instances: int = 4,
    combineall: bool = False,
    pin_memory: bool = False,
    synthreid: SynthReIDSpec | None = None,
    skip_bad_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    training: bool = True,
) -> ImageDataManager:
    """A torchreid ``ImageDataManager`` for one of the registry's re-ID data sets.

    Args:
        dataset: a name from ``list_datasets("reid")``: ``market1501``, ``dukemtmcreid``,
            ``synthreid``, ``folder``, ...
        root: the data root (``folder``: the Market-layout folder itself).
        height, width: network input size.
        transforms: torchreid training transforms; ``random_crop`` resizes 1.125x larger
            and crops back (the paper's "resize larger + random crop").
        sampler: ``random`` or ``identity`` (``num_instances`` images per identity).
        pin_memory: pin host memory (faster copies to a GPU).
        skip_bad_images: leave unreadable or truncated images out (with a warning
            listing them) instead of failing with the list.
        max_image_pixels: images with more pixels are bad images (``data.max_image_pixels``).
        training: the training split will be trained on (False: only the test loaders
            are read), so it must hold at least 2 identities.

    Returns:
        The data manager, its ``train_loader`` and ``test_loader`` ready.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers are {list(SAMPLERS)}")
    for name in transforms:  # torchreid would silently ignore an unknown name
        check_choice(name, TRANSFORMS, "transform")
    if sampler == "identity":
        check_identity_batch(batch_size, num_instances)
    prepare_reid_dataset(dataset, root, synthreid)
    register_torchreid_datasets(skip_bad_images=skip_bad_images, max_image_pixels=max_image_pixels)
    # torchreid prints about 40 lines here (its transforms, the data set table twice, a
    # summary box); ``data_summary`` says what matters in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        manager = ImageDataManager(
            # torchreid's data root: each data set's class finds its folder under it (locate).
            root=str(root),
            sources=dataset,
            height=height,
            width=width,
            transforms=list(transforms),
            norm_mean=list(norm_mean),
            norm_std=list(norm_std),
            use_gpu=pin_memory,  # torchreid uses this flag only to pin loader memory
            combineall=combineall,
            batch_size_train=batch_size,
            batch_size_test=test_batch_size,
            workers=workers,
            num_instances=num_instances,
            # torchreid's names of the two samplers of utils.options.SAMPLERS
            train_sampler="RandomIdentitySampler" if sampler == "identity" else "RandomSampler",
        )
    if training:  # before the batch check: a one-identity split is the deeper problem
        check_identities(manager)
    n_train = len(manager.train_loader.dataset)
    if len(manager.train_loader) == 0:
        raise ValueError(
            f"{dataset}: the training set has {n_train} images, fewer than batch_size {batch_size}"
        )
    for name, loaders in manager.test_loader.items():
        check_query_gallery(name, loaders["query"].dataset.data, loaders["gallery"].dataset.data)
    return manager


def _counts(items) -> tuple[int, int, set]:
    """(identities, images, cameras) of torchreid items ``(path, pid, camid, ...)``."""
    return len({it[1] for it in items}), len(items), {it[2] for it in items}


def data_summary(manager: ImageDataManager) -> str:
    """One line for the data a manager serves, e.g. ``synthreid: train 100 ids / 940
    images, query 100 ids / 291 images, gallery 101 ids / 634 images, 4 cameras`` (the
    gallery's ids include distractors); one such part per test data set after the first."""
    ids, images, cams = _counts(manager.train_loader.dataset.data)
    parts = []
    for name, loaders in manager.test_loader.items():
        q_ids, q_images, q_cams = _counts(loaders["query"].dataset.data)
        g_ids, g_images, g_cams = _counts(loaders["gallery"].dataset.data)
        query, gallery = f"{q_ids} ids / {q_images} images", f"{g_ids} ids / {g_images} images"
        parts.append(f"{name}: query {query}, gallery {gallery}")
        cams |= q_cams | g_cams
    sources = "+".join(manager.sources) if hasattr(manager, "sources") else "train"
    train = f"{sources}: train {ids} ids / {images} images"
    if len(parts) == 1 and parts[0].startswith(f"{sources}: "):  # the usual case
        parts[0] = parts[0][len(sources) + 2 :]
    return f"{train}, {', '.join(parts)}, {len(cams)} cameras"
