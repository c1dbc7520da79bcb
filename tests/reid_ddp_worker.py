"""Worker for tests/test_reid_distributed.py: one tiny re-ID run with 1 or N processes.

    python tests/reid_ddp_worker.py ROOT OUT.json                                   # 1 process
    torchrun --standalone --nproc_per_node 2 tests/reid_ddp_worker.py ROOT OUT.json # 2 processes

Real torchreid data manager on a Market-layout folder, the shared Trainer with the re-ID
task, staged freezing in epoch 1 (frozen parameters under DDP). The model has no BatchNorm and the
data no augmentation, so with the same global batch both runs must agree up to
floating-point summation order.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ddp_worker import TinyNoBNNet  # noqa: E402

from reid_dhm import BranchSampler, DHMLoss  # noqa: E402
from reid_dhm.data.reid_manager import build_reid_datamanager  # noqa: E402
from reid_dhm.engines import distributed as dist  # noqa: E402
from reid_dhm.engines.hooks import FreezeHook  # noqa: E402
from reid_dhm.engines.optim import build_optimizer, build_scheduler  # noqa: E402
from reid_dhm.engines.reid_loaders import reid_train_loader  # noqa: E402
from reid_dhm.engines.reid_task import ReidTask  # noqa: E402
from reid_dhm.engines.trainer import Trainer  # noqa: E402

GLOBAL_BATCH = 8


def main(root: str, out_json: str) -> None:
    info = dist.init_distributed("cpu")
    with contextlib.redirect_stdout(sys.stdout if info.is_main else io.StringIO()):
        manager = build_reid_datamanager(
            "folder", root, height=32, width=16, transforms=(), batch_size=GLOBAL_BATCH,
            test_batch_size=5, workers=0,
        )  # fmt: skip
    reid_train_loader(manager, GLOBAL_BATCH, "random", seed=3)
    torch.manual_seed(0)
    model = TinyNoBNNet(num_classes=manager.num_train_pids, branches=("aux1",))
    wrapped = dist.wrap_model(model, find_unused_parameters=True)
    optimizer = build_optimizer(model, "sgd", lr=0.05, weight_decay=5e-4)
    task = ReidTask(manager, branches=model.branch_names)
    engine = Trainer(
        task, wrapped, DHMLoss("dhm", label_smooth=0.1), optimizer,
        build_scheduler(optimizer, "multi_step", milestones=[2]), max_epoch=3,
        branch_sampler=BranchSampler(model.branch_names), hooks=[FreezeHook(1)],
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        engine.train()
    if info.is_main:
        history = [
            {k: v for k, v in h.items() if isinstance(v, float) and k != "seconds"}
            for h in engine.history
        ]
        Path(out_json).write_text(
            json.dumps(
                {
                    "world_size": info.world_size,
                    "steps": len(manager.train_loader),
                    "history": history,
                    "results": task.tables(),
                    "params": [p.detach().flatten().tolist() for p in model.parameters()],
                }
            )
        )
    dist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
