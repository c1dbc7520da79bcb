"""The re-ID engine under torchrun (gloo, 2 CPU processes) against the same run in one."""

import json
import sys

import numpy as np
import pytest
import torch
from test_distributed import ROOT, TORCHRUN, _run

from reid_dhm.engines.reid_loaders import BlockShardSampler


@pytest.mark.slow  # one run alone and one under torchrun: over 20 s on 2 CPU cores
def test_two_processes_train_the_reid_engine_like_one(tiny_reid, tmp_path):
    worker = str(ROOT / "tests" / "reid_ddp_worker.py")
    _run([sys.executable, worker, str(tiny_reid), str(tmp_path / "one.json")])
    _run([*TORCHRUN, "2", worker, str(tiny_reid), str(tmp_path / "two.json")])
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["steps"] == one["steps"] > 0  # same number of global steps
    assert len(one["history"]) == len(two["history"]) == 3
    for a, b in zip(one["history"], two["history"]):
        assert a.keys() == b.keys() and "kl/aux1->main" in a
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # Evaluation: features from both shards, gathered, rank the same way.
    for branch in ("main", "aux1"):
        for key, value in one["results"]["folder"][branch].items():
            assert two["results"]["folder"][branch][key] == pytest.approx(value, abs=1e-6)
    for p, q in zip(one["params"], two["params"]):
        np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-5)


class _Stream(torch.utils.data.Sampler):
    """A 'random' base sampler that draws from Python's global RNG, like torchreid's."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        import random

        idx = list(range(self.n))
        random.shuffle(idx)
        return iter(idx)

    def __len__(self):
        return self.n


def test_block_shards_rebuild_the_global_batches(monkeypatch):
    from reid_dhm.engines import distributed as dist

    base = _Stream(26)
    single = BlockShardSampler(base, block=8, seed=5)
    single.set_epoch(2)
    order = list(single)
    assert len(order) == 24 and order == list(single)  # seeded by (seed, epoch) only
    shards = []
    for rank in range(2):
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "rank", lambda r=rank: r)
        s = BlockShardSampler(base, block=4, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
    # Step t of the 2-process run = rank 0's block t + rank 1's block t = global batch t.
    for t in range(3):
        together = shards[0][4 * t : 4 * t + 4] + shards[1][4 * t : 4 * t + 4]
        assert together == order[8 * t : 8 * t + 8]


@pytest.mark.slow  # a 2-process torchrun launch: over 20 s on 2 CPU cores
def test_torchrun_train_py_reid_writes_once_on_rank_0(tiny_reid, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        *TORCHRUN, "2", "tools/train.py", "--dataset", "folder", "--root", str(tiny_reid),
        "--output-dir", str(out), "model.name=dhm_mobilenetv2", "model.pretrained=false",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.workers=0",
        "train.max_epoch=2", "train.fixbase_epoch=1", "test.vis_queries=2",
    ]  # fmt: skip
    proc = _run(cmd)
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1 and proc.stdout.count("** folder:") == 1
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert [h["frozen"] for h in ckpt["history"]] == [True, False]
    results = json.loads((out / "results.json").read_text())
    assert results["folder"]["main"]["num_valid_queries"] > 0
