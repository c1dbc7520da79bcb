"""Issue 21 item 2: the training loop reads the device only at the print interval and at
the epoch end.

Every host read of a tensor (``item``, ``float()``, ``int()``, ``bool()``, ``tolist``,
``numpy``, ``.cpu()``, ``format``, and the ops whose output size depends on the data:
``nonzero``, boolean indexing, ``masked_select``, ``unique``) is counted through a
``TorchFunctionMode`` during a real tiny re-ID run (torchreid data manager, the run
function, every standard hook), and attributed to the iteration it happened in. On a GPU
each of these reads waits for the device; on this CPU test they are only counted.

Two kinds of reads are not the loop's and are left out: the data loader's (in a real
run its work happens in worker processes, on the host) and those of the optimizer's
step counters (torch keeps ``state['step']`` on the host unless ``capturable``, so
reading them never waits for a device).
"""

import math
import sys
from collections import Counter

import pytest
import torch
from conftest import run_training
from torch.overrides import TorchFunctionMode

from reid_dhm.engines import hooks
from reid_dhm.engines import trainer as trainer_module

READS = {
    "item", "__float__", "__int__", "__index__", "__bool__", "__complex__", "__format__",
    "tolist", "numpy", "cpu", "nonzero", "argwhere", "masked_select", "unique",
    "unique_consecutive",
}  # fmt: skip
# Where the data loader's work happens (worker processes in a real run).
LOADER_FILES = ("torch/utils/data/", "torchreid/reid/data/", "torchvision/transforms/", "PIL/")


def _bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostReads(TorchFunctionMode):
    """Counts host reads made while a ``Trainer`` trains, by (epoch, iteration)."""

    def __init__(self):
        super().__init__()
        self.trainer = None
        self.training = False
        self.reads = Counter()  # (epoch, step) -> reads
        self.where = Counter()  # (function, file:line of the caller) -> reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.training and (
            name in READS or (name in ("__getitem__", "__setitem__") and _bool_index(args))
        ):
            self._count(name, args)
        return func(*args, **(kwargs or {}))

    def _count(self, name, args) -> None:
        frame, caller = sys._getframe(2), None
        while frame is not None:
            file = frame.f_code.co_filename
            if any(part in file for part in LOADER_FILES):
                return
            if caller is None and "/torch/" not in file:
                caller = f"{file.split('/')[-1]}:{frame.f_lineno}"
            frame = frame.f_back
        if self._is_step_counter(args[0] if args else None):
            return
        t = self.trainer
        self.reads[(t.epoch, t.step)] += 1
        self.where[(name, caller)] += 1

    def _is_step_counter(self, tensor) -> bool:
        states = self.trainer.optimizer.state.values()
        return any(state.get("step") is tensor for state in states)


@pytest.fixture
def host_reads(monkeypatch):
    """A ``HostReads`` counting inside every ``Trainer.train_epoch`` of the test."""
    mode = HostReads()
    train_epoch = trainer_module.Trainer.train_epoch

    def counted(self, epoch):
        mode.trainer, mode.training = self, True
        try:
            return train_epoch(self, epoch)
        finally:
            mode.training = False

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on a busy machine
    try:
        with mode:
            yield mode
    finally:
        torch.set_num_threads(threads)


TINY = [
    "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=32",
    "data.width=32", "data.workers=0", "train.fixbase_epoch=0", "test.vis_queries=0",
    "train.max_epoch=1",
]  # fmt: skip
TRIPLET = ["loss.triplet_weight=1.0", "data.sampler=identity", "data.num_instances=2"]


@pytest.mark.parametrize(
    "terminal, extra",
    [(True, ["data.batch_size=3"]), (False, ["data.batch_size=4", *TRIPLET])],
    ids=["dhm-bar", "dhm+triplet-lines"],
)
def test_the_loop_reads_the_device_only_at_the_print_interval(
    tiny_reid, tmp_path, host_reads, monkeypatch, terminal, extra
):
    init = hooks.ConsoleHook.__init__
    monkeypatch.setattr(
        hooks.ConsoleHook, "__init__", lambda self, *a, **k: init(self, *a, **k, terminal=terminal)
    )
    every = 3
    overrides = [f"data.root={tiny_reid}", *TINY, f"train.print_freq={every}", *extra]
    run_training("folder", overrides, tmp_path / "run")
    # the identity sampler's length is an estimate: the last iteration the loop ran
    last = host_reads.trainer.step
    n = last + 1
    assert n >= 3 * every, "the test needs several print intervals in the epoch"
    printed = {s for s in range(n) if (s + 1) % every == 0}
    stray = {s: k for (_, s), k in host_reads.reads.items() if s not in printed | {last}}
    assert not stray, f"reads outside the print interval: {stray}; {host_reads.where}"
    # Every loss term at once: one read per print (console and TensorBoard share it) ...
    assert all(host_reads.reads[(0, s)] == 1 for s in printed - {last}), host_reads.reads
    # ... and a few at the epoch end (the non-finite flag, the epoch's sums).
    total = sum(host_reads.reads.values())
    assert total <= math.ceil(n / every) + 3 and total < n, host_reads.where
