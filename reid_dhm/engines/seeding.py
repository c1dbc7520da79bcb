"""Training data whose randomness depends only on (seed, epoch, sample).

A DataLoader's augmentation draws come from each worker's RNG, whose state depends on
the number of workers, on persistent workers carrying it across epochs, and on
whatever else consumed random numbers: a run resumed after epoch N would see other
crops and flips than the uninterrupted one. Here the sampler hands the dataset
``(epoch, index)`` pairs, and the dataset seeds Python's, numpy's and torch's RNGs
from ``(seed, epoch, index)`` for each sample (restoring them afterwards), so every
sample's augmentation is the same in any process, worker count or resumed run.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (run seed, epoch, sample index)."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    high, low = (int(v) for v in mixed.generate_state(2, dtype=np.uint32))
    return (high << 31) ^ low


class EpochIndexSampler(Sampler):
    """Yields ``(epoch, index)`` for every index of ``base``; forwards ``set_epoch``."""

    def __init__(self, base: Sampler):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.base:
            yield (self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.base)


class EpochSeededDataset(Dataset):
    """``base[index]`` with the global RNGs seeded from (seed, epoch, index) around it.

    Indexed with ``(epoch, index)`` pairs (``EpochIndexSampler``); a plain integer
    index means epoch 0. Attribute access falls through to ``base``.
    """

    def __init__(self, base, seed: int):
        self.base = base
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):
        # "base": not set yet (unpickling), no recursion. Dunders are not forwarded: the
        # DataLoader would take a Subset's ``__getitems__`` and index it with our pairs.
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            s = sample_seed(self.seed, epoch, index)
            random.seed(s)
            np.random.seed(s % (2**32))
            torch.manual_seed(s)
            try:
                return self.base[index]
            finally:
                random.setstate(py)
                np.random.set_state(npy)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group; only the
    main process should act on it (it finishes the iteration and stops cleanly)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = ["EpochIndexSampler", "EpochSeededDataset", "ignore_sigint", "sample_seed"]
