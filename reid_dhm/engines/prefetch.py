"""A training loader that hands the loop batches already on the device.

``DeviceLoader`` wraps a DataLoader. While the loop trains on batch k it has batch k+1
copied to the device (from pinned memory, ``non_blocking``) and, with tensor
augmentation, augmented there, all on a side CUDA stream, so neither the copy nor the
augmentation waits for the step or makes the step wait. On CPU it only applies the
batch transform. Everything else a loop asks of its loader (``len``, ``sampler``,
``dataset``, ...) is the wrapped loader's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def to_device(batch, device: torch.device):
    """Every tensor of a (nested) batch on ``device``, copied asynchronously."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _record_stream(batch, stream) -> None:
    """Tell the caching allocator the batch's tensors are used on ``stream`` too (they
    were made on the side stream; without this their memory could be reused early)."""
    if isinstance(batch, Tensor):
        if batch.device.type == "cuda":
            batch.record_stream(stream)
    elif isinstance(batch, dict):
        for v in batch.values():
            _record_stream(v, stream)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _record_stream(v, stream)


class DeviceLoader:
    """``loader``'s batches on ``device``, the next one prepared while this one trains.

    Args:
        loader: a DataLoader (pinned memory on CUDA makes the copies asynchronous).
        device: the training device.
        transform: applied to each batch on the device (e.g. tensor augmentation of
            its images), in the side stream on CUDA; None: the batch as it comes.
    """

    def __init__(self, loader, device: torch.device, transform: Callable | None = None):
        self.loader, self.device, self.transform = loader, torch.device(device), transform

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _prepare(self, batch):
        batch = to_device(batch, self.device)
        return self.transform(batch) if self.transform is not None else batch

    def __iter__(self) -> Iterator:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._prepare(batch)
            return
        stream = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def ahead():
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(stream):
                return self._prepare(batch)

        upcoming = ahead()
        while upcoming is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)  # the copy and augmentation are done first
            _record_stream(upcoming, current)
            batch, upcoming = upcoming, ahead()
            yield batch


__all__ = ["DeviceLoader", "to_device"]
