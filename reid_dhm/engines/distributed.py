"""Multi-process training with ``torchrun`` + DistributedDataParallel, for both engines.

Every function here also works in a plain single process (no ``torchrun``): the
process group is simply not initialised, ``world_size()`` is 1, reductions return
their input and ``wrap_model`` returns the model unchanged. Engines can therefore
call these helpers unconditionally.

Conventions:

* ``torchrun --nproc_per_node N tools/train.py ...`` sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads
  them and picks the backend from the device: ``nccl`` on CUDA (one GPU per process,
  ``cuda:LOCAL_RANK``), ``gloo`` on CPU.
* Training data: :func:`train_sampler` gives a ``DistributedSampler`` in every case
  (``num_replicas=1`` without ``torchrun``), so the shuffled order of an epoch depends
  only on (seed, epoch) and the *global* batch sequence is the same for any process
  count. Batch sizes in configs are global; :func:`per_process_batch` divides them.
* Evaluation: :class:`ShardSampler` splits the data set into contiguous, disjoint
  shards (sizes differ by at most one, nothing dropped, nothing duplicated). Each rank
  evaluates its shard; sums and counts go through :func:`all_reduce_sum`, and features
  come back in data-set order through :func:`gather_concat` (rank order = data order).
* Rank 0 alone prints, writes checkpoints, TensorBoard events and plots
  (:func:`is_main_process`).

Using it in an engine (the re-ID engine would do the same)::

    from reid_dhm.engines import distributed as dist

    info = dist.init_distributed("auto")              # device for this process
    model = build_model(...).to(info.device)
    model = dist.wrap_model(model, find_unused_parameters=True)  # DDP when world > 1
    sampler = dist.train_sampler(train_set, seed=cfg_seed)
    loader = DataLoader(train_set, batch_size=dist.per_process_batch(32), sampler=sampler)
    for epoch in ...:
        sampler.set_epoch(epoch)                       # a new shuffle every epoch
        ...                                            # forward/backward through `model`
        totals = dist.all_reduce_sum(torch.tensor([loss_sum, n]))
        if dist.is_main_process():
            save_checkpoint(...)                       # unwraps DDP itself
    # query/gallery features: every rank extracts its ShardSampler shard, then
    feats = dist.gather_concat(local_feats)            # full matrix, data-set order
    dist.cleanup()

For torchreid's ``ImageDataManager``, rebuild ``train_loader`` with
``train_sampler(datamanager.train_loader.dataset, ...)`` (for the identity sampler,
shard the identity-balanced index list per rank instead) and the query/gallery
loaders with :class:`ShardSampler`; ``unwrap`` (utils.checkpoint) reaches the bare
model for ``set_active_branches`` and freezing. With frozen layers or branches that
are inactive in some epochs, pass ``find_unused_parameters=True`` to
:func:`wrap_model`, otherwise DDP waits forever for gradients that never come.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..utils.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the process count and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    """True when a process group is up (launched by torchrun and initialised)."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 without a process group; falls back to ``$RANK``)."""
    if is_initialized():
        return tdist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return tdist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the process that logs and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Args:
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` (or ``'cuda:K'``). Under torchrun with
            CUDA, each process takes ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on CPU
            the ``gloo`` backend.
        timeout_s: how long collective operations wait for the other ranks.

    Returns:
        :class:`DistInfo`. Without torchrun (``WORLD_SIZE`` unset or 1) nothing is
        initialised and the resolved device is returned with rank 0, world size 1.
        Calling it again once initialised returns the current state.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, dev, None)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise ValueError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible; "
                f"use --nproc_per_node <= the GPU count"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local, dev, backend)


def cleanup(barrier: bool = True) -> None:
    """Leave the process group; a no-op in a single process.

    Args:
        barrier: wait for every rank first (the normal end). Pass False after an error:
            the other ranks may be stuck in a collective, and torchrun stops them once
            this process exits.
    """
    if is_initialized():
        try:
            if barrier:
                tdist.barrier()
        finally:
            # A finished run's DDP wrapper (its reducer holds the gloo/nccl backend) is
            # often kept alive only by reference cycles (optimizer <-> scheduler, engine
            # hooks). Left to the interpreter's exit, the backend's worker threads are torn
            # down during finalisation, which can abort the process ("terminate called
            # without an active exception", seen under CPU oversubscription; pytorch
            # #179291). Collecting here frees it while Python is fully alive.
            gc.collect()
            tdist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        tdist.barrier()


def wrap_model(
    model: nn.Module, find_unused_parameters: bool = False, sync_bn: bool = False, **ddp_kwargs
) -> nn.Module:
    """DistributedDataParallel around ``model`` when several processes run, else ``model``.

    Args:
        model: already on this process's device.
        find_unused_parameters: required when some parameters get no gradient in some
            iterations: inactive DHM branches (Bernoulli sampling, baseline mode on a
            model with branches), frozen backbone stages.
        sync_bn: convert BatchNorm to SyncBatchNorm (CUDA only: torch implements it
            for GPUs), so batch statistics span the global batch.
        **ddp_kwargs: passed to ``DistributedDataParallel``. By default DDP copies rank
            0's buffers (BN running statistics) to every rank before each forward.
    """
    if not is_initialized() or world_size() == 1:
        return model
    device = next(model.parameters()).device
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("train.sync_bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
    )


def per_process_batch(global_batch: int) -> int:
    """The per-process share of a global batch size; it must divide evenly."""
    n = world_size()
    if global_batch < n or global_batch % n:
        raise ValueError(
            f"the global batch size {global_batch} must be a multiple of the process count {n}"
        )
    return global_batch // n


def train_sampler(
    dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DistributedSampler:
    """The training sampler for any process count (call ``set_epoch`` every epoch).

    Rank r takes positions r, r + W, r + 2W, ... of the epoch's permutation, so the
    first per-process batch of every rank together is the first global batch of a
    single-process run with the same seed. Without ``drop_last`` the permutation is
    padded with its first indices to a multiple of W (at most W - 1 repeats).
    """
    return DistributedSampler(
        dataset,
        num_replicas=world_size(),
        rank=rank() if is_initialized() else 0,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


class ShardSampler(Sampler[int]):
    """Contiguous, disjoint evaluation shards: every sample is seen exactly once overall.

    Rank r of W iterates ``range(start_r, end_r)`` where the shard sizes differ by at
    most one. Concatenating per-rank results in rank order gives data-set order.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank_: int | None = None):
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = (rank() if is_initialized() else 0) if rank_ is None else int(rank_)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        n = len(dataset)
        base, extra = divmod(n, self.num_replicas)
        self.start = self.rank * base + min(self.rank, extra)
        self.end = self.start + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


def eval_sampler(dataset: Dataset) -> ShardSampler:
    """:class:`ShardSampler` for this process."""
    return ShardSampler(dataset)


def _comm_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo is used with CPU tensors here.
    if is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: Tensor) -> Tensor:
    """Element-wise sum over ranks; a new tensor on ``value``'s device (input untouched).

    Use it on sums and counts (never on means of unequal shards), e.g.
    ``torch.stack([loss_sum, correct, count])``. The tensor travels through the
    backend's device (CPU for gloo, this process's GPU for nccl) and comes back.
    """
    out = value.detach().clone()
    if is_initialized() and world_size() > 1:
        moved = out.to(_comm_device())
        tdist.all_reduce(moved, op=tdist.ReduceOp.SUM)
        out = moved.to(value.device)
    return out


def all_reduce_dict(sums: Mapping[str, Tensor | float]) -> dict[str, float]:
    """Sum a mapping of scalars over ranks in one collective; returns Python floats.

    Every rank must pass the same keys (the order does not matter).
    """
    keys = sorted(sums)
    if not keys:
        return {}
    device = _comm_device()
    flat = torch.stack(
        [torch.as_tensor(sums[k]).to(device, torch.float64).reshape(()) for k in keys]
    )
    return dict(zip(keys, all_reduce_sum(flat).tolist()))


def gather_concat(local: Tensor) -> Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order (shards may differ in size).

    With :class:`ShardSampler` shards this restores data-set order, e.g. query features
    (N_r, D) per rank -> (N, D) on every rank.
    """
    if not is_initialized() or world_size() == 1:
        return local
    n = world_size()
    home, local = local.device, local.to(_comm_device())
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    tdist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    # all_gather needs equal shapes: pad every shard to the longest, then trim.
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(n)]
    tdist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(home)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every rank in place.

    Call before evaluating on all ranks: after the last training step each rank's BN
    statistics differ (they are updated from its local batch), while the checkpoint
    holds rank 0's.
    """
    if not is_initialized() or world_size() == 1:
        return
    for buf in model.buffers():
        tdist.broadcast(buf.data, src)


__all__ = [
    "DistInfo",
    "ShardSampler",
    "all_reduce_dict",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "eval_sampler",
    "gather_concat",
    "init_distributed",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "per_process_batch",
    "rank",
    "train_sampler",
    "world_size",
]
