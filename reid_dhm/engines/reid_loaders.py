"""Training and evaluation loaders of a torchreid data manager, for 1 or N processes.

torchreid's ``RandomSampler`` / ``RandomIdentitySampler`` know nothing of processes
and draw from the global RNGs, so the batch order depends on everything else that
consumed random numbers. Here the order of an epoch depends only on (seed, epoch):
a resumed run sees the batches the uninterrupted one would have, and N processes
together see exactly the global batches of a single-process run.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torchreid.reid.data.sampler import RandomIdentitySampler

from ..data.device_augment import BatchAugment, WorkerTransform, resolve_augment, train_steps
from ..utils.options import check_identity_batch
from . import distributed as dist
from .prefetch import DeviceLoader
from .seeding import EpochIndexSampler, EpochSeededDataset, ignore_stop_signals


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and numpy's global RNGs inside the block, restore them after."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class BlockShardSampler(Sampler[int]):
    """Deals a sampler's index stream to processes in blocks of one per-process batch.

    The base sampler (e.g. torchreid's identity-balanced one) is drawn under RNGs seeded
    by (seed, epoch), so every process draws the same stream; rank r of W then takes
    blocks r, r + W, r + 2W, ... of ``block`` indices. With ``block`` = global batch / W,
    the W per-process batches of a step form exactly the single-process global batch
    (identity groups of ``num_instances`` stay whole when ``block`` is a multiple of it).
    Only whole rounds of W blocks are kept, so every rank runs the same number of steps.
    """

    def __init__(self, base: Sampler, block: int, seed: int = 0):
        self.base = base
        self.block = int(block)
        self.seed = int(seed)
        self.epoch = 0
        self.world = dist.world_size()
        self.rank = dist.rank() if dist.is_initialized() else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _stream(self) -> list[int]:
        with seeded_global_rngs(self.seed * 100_003 + self.epoch):
            return list(self.base)

    def __iter__(self) -> Iterator[int]:
        idx = self._stream()
        round_size = self.block * self.world
        rounds = len(idx) // round_size
        for r in range(rounds):
            start = r * round_size + self.rank * self.block
            yield from idx[start : start + self.block]

    def __len__(self) -> int:
        return len(self.base) // (self.block * self.world) * self.block


def warn_short_identities(items, num_instances: int) -> list[int]:
    """Warn (once, naming them) about identities with fewer than K training images.

    torchreid's identity sampler draws their K images with replacement, so the same
    image appears twice in a batch; worth knowing, not an error.

    Returns:
        Their (relabelled) ids.
    """
    counts: dict[int, int] = {}
    for item in items:
        counts[item[1]] = counts.get(item[1], 0) + 1
    short = sorted(pid for pid, n in counts.items() if n < num_instances)
    if short and dist.is_main_process():
        shown = ", ".join(f"{pid} ({counts[pid]})" for pid in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        warnings.warn(
            f"{len(short)} of {len(counts)} training identities have fewer than "
            f"data.num_instances={num_instances} images (id (images): {shown}{more}); the "
            "identity sampler draws their images with replacement to fill each group",
            stacklevel=2,
        )
    return short


class AugmentImages:
    """Batch transform of the tensor path: ``batch['img']`` = (uint8 images, parameters)
    from the workers' ``WorkerTransform`` -> the augmented float32 images."""

    def __init__(self, augment: BatchAugment):
        self.augment = augment

    def __call__(self, batch: dict) -> dict:
        images, params = batch["img"]
        return {**batch, "img": self.augment(images, params)}


def reid_train_loader(
    manager,
    batch_size: int,
    sampler: str = "random",
    num_instances: int = 4,
    seed: int = 0,
    *,
    augment: str = "pil",
    device: torch.device | None = None,
):
    """Replace ``manager.train_loader`` by one whose order depends only on (seed, epoch).

    Args:
        manager: a torchreid ``ImageDataManager``.
        batch_size: the GLOBAL batch size (split evenly over processes).
        sampler: ``'random'`` or ``'identity'`` (``num_instances`` images per identity).
        augment: ``'pil'`` (torchreid's train transform in the workers), ``'tensor'``
            (workers decode to uint8 and draw the augmentation's parameters; the same
            augmentation runs batched on ``device``, ``data.device_augment``) or
            ``'auto'`` (tensor on CUDA, else pil).
        device: the training device. On CUDA, or with tensor augmentation, the loader
            is a ``DeviceLoader``: batches arrive on the device, the next one copied
            (and augmented) on a side stream while the current one trains.

    Returns:
        The sampler; the engine calls its ``set_epoch`` every epoch.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    augment = resolve_augment(augment, device)
    old = manager.train_loader
    dataset = old.dataset
    per_process = dist.per_process_batch(batch_size)
    if sampler == "identity":
        check_identity_batch(batch_size, num_instances, batch_size // per_process)
        warn_short_identities(dataset.train, num_instances)
        base = RandomIdentitySampler(dataset.train, batch_size, num_instances)
        chosen = BlockShardSampler(base, per_process, seed)
    else:
        chosen = dist.train_sampler(dataset, shuffle=True, seed=seed)
    # Augmentation seeded per (seed, epoch, sample): any worker count, persistent
    # workers and resumed runs draw the same crops and flips.
    chosen = EpochIndexSampler(chosen)
    on_device = None
    if augment == "tensor":
        steps = train_steps(dataset.transform)  # the run's own torchreid transform
        dataset.transform = WorkerTransform(steps)
        on_device = AugmentImages(BatchAugment(steps))
    loader = DataLoader(
        EpochSeededDataset(dataset, seed),
        batch_size=per_process,
        sampler=chosen,
        num_workers=old.num_workers,
        pin_memory=old.pin_memory,
        drop_last=True,
        persistent_workers=old.num_workers > 0,
        worker_init_fn=ignore_stop_signals,
    )
    if device.type == "cuda" or on_device is not None:
        loader = DeviceLoader(loader, device, on_device)
    manager.train_loader = loader
    return chosen


def sharded_eval_loader(loader: DataLoader) -> DataLoader:
    """The same query/gallery loader restricted to this process's contiguous shard."""
    if dist.world_size() == 1:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=dist.eval_sampler(loader.dataset),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )
