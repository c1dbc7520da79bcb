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

import atexit
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


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: ignore SIGINT and SIGTERM in the worker.

    Ctrl-C reaches the whole process group, and schedulers (SLURM, systemd, ``timeout``,
    ``kill -TERM -<pgid>``) signal every process of the job; a worker that died of it
    would take the run down with a DataLoader traceback. Only the main process acts on
    them (it finishes the iteration and stops cleanly, ending its workers itself).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_workers_before_exit() -> None:
    """At interpreter exit, end the daemonic child processes (DataLoader workers) with
    SIGKILL. multiprocessing's own exit handler ends them with SIGTERM, which these
    workers ignore, and then waits for them forever. They hold nothing to save: a
    worker only reads and transforms images for the main process."""
    import multiprocessing

    # torch's SIGCHLD handler would report each of these deaths as a worker failure.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


# Registered after multiprocessing's exit handler (torch imports it first), so it runs
# before it.
atexit.register(_end_workers_before_exit)

# The earlier name (SIGINT only), kept for callers of the library.
ignore_sigint = ignore_stop_signals


class StopSignalsIgnored:
    """A picklable ``worker_init_fn``: :func:`ignore_stop_signals`, then ``previous``."""

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals(worker_id)
        if self.previous is not None:
            self.previous(worker_id)


def workers_ignore_stop_signals(loader):
    """Make ``loader``'s workers (one built elsewhere, e.g. by torchreid) ignore stop
    signals, keeping its own ``worker_init_fn``; returns the loader."""
    current = getattr(loader, "worker_init_fn", None)
    if getattr(loader, "num_workers", 0) and not (
        current is ignore_stop_signals or isinstance(current, StopSignalsIgnored)
    ):
        loader.worker_init_fn = StopSignalsIgnored(current)
    return loader


__all__ = [
    "EpochIndexSampler",
    "EpochSeededDataset",
    "StopSignalsIgnored",
    "ignore_sigint",
    "ignore_stop_signals",
    "sample_seed",
    "workers_ignore_stop_signals",
]
