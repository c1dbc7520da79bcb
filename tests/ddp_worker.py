"""Worker for tests/test_distributed.py: the same tiny training run with 1 or N processes.

    python tests/ddp_worker.py OUT.json                                   # 1 process
    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT.json # 2 processes

The model has no BatchNorm (CPU has no SyncBatchNorm, and per-process batch statistics
would differ from global ones), no dropout and no augmentation, so with the same global
batch the two runs must agree up to floating-point summation order. Rank 0 writes
the per-epoch history, the final parameters' checksum, test errors and a gathered
feature matrix to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reid_dhm import BranchSampler, DHMLoss  # noqa: E402
from reid_dhm.engines import distributed as dist  # noqa: E402
from reid_dhm.engines.classification import ClassificationTask  # noqa: E402
from reid_dhm.engines.optim import build_optimizer, build_scheduler  # noqa: E402
from reid_dhm.engines.trainer import Trainer  # noqa: E402
from reid_dhm.models.dhm import AuxBranch, DHMNet  # noqa: E402

GLOBAL_BATCH = 16
NUM_CLASSES = 7


def _conv(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class TinyNoBNNet(DHMNet):
    """(B, 3, 8, 8) -> main embedding (B, 16); aux1 forks after layer1. No BatchNorm."""

    stage_names = ("stem", "layer1", "layer2")

    def __init__(self, num_classes: int = NUM_CLASSES, branches=("aux1",)):
        super().__init__()
        self.init_kwargs = {"num_classes": num_classes, "branches": tuple(branches)}
        self.stem = _conv(3, 8, 1)
        self.layer1 = _conv(8, 8, 2)
        self.layer2 = _conv(8, 16, 2)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 16
        self.classifier = nn.Linear(16, num_classes)
        aux = {"aux1": AuxBranch("layer1", _conv(8, 12, 2), 12, num_classes)}
        self._set_branches({k: v for k, v in aux.items() if k in branches})


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    images = torch.randn(n, 3, 8, 8, generator=g) + labels.view(-1, 1, 1, 1) * 0.5
    return TensorDataset(images, labels)


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    payload = train_and_measure(info)  # its DDP wrapper is garbage once this returns
    if info.is_main:
        Path(out).write_text(json.dumps(payload))
    dist.cleanup()  # collects that garbage, then leaves the process group


def train_and_measure(info: dist.DistInfo) -> dict:
    """Train, evaluate and gather features; the JSON payload (rank 0's is written)."""
    torch.manual_seed(0)  # same initial weights everywhere (DDP would broadcast anyway)
    model = TinyNoBNNet()
    wrapped = dist.wrap_model(model)
    train_set, test_set = data(48, 1), data(23, 2)  # 23: uneven evaluation shards
    sampler = dist.train_sampler(train_set, shuffle=True, seed=3)
    train_loader = DataLoader(
        train_set, batch_size=dist.per_process_batch(GLOBAL_BATCH), sampler=sampler
    )
    test_loader = DataLoader(test_set, batch_size=4, sampler=dist.eval_sampler(test_set))
    optimizer = build_optimizer(model, "sgd", lr=0.2, weight_decay=1e-4, momentum=0.9)
    scheduler = build_scheduler(optimizer, "multi_step", milestones=[2], max_epoch=3)
    task = ClassificationTask(train_loader, test_loader, per_branch=True)
    engine = Trainer(
        task, wrapped, DHMLoss("dhm"), optimizer, scheduler, max_epoch=3, eval_freq=1,
        branch_sampler=BranchSampler(model.branch_names),
    )  # fmt: skip
    engine.train()
    results = task.results(engine)
    # Features of each rank's evaluation shard, gathered back into data-set order.
    model.eval()
    with torch.no_grad():
        local = torch.cat([model(x) for x, _ in test_loader])
    gathered = dist.gather_concat(local)
    sums = dist.all_reduce_dict({"n": float(len(local)), "rank": float(info.rank)})
    with torch.no_grad():
        full = model(test_set.tensors[0])
    return {
        "world_size": info.world_size,
        "history": [
            {k: v for k, v in h.items() if isinstance(v, float) and k != "seconds"}
            for h in engine.history
        ],
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
        "results": results,
        "gathered_matches": bool(torch.allclose(gathered, full, atol=1e-5)),
        "gathered_rows": int(gathered.shape[0]),
        "sums": sums,
    }


if __name__ == "__main__":
    main(sys.argv[1])
