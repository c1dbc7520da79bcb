"""DDP on CPU (gloo, 2 processes via torchrun) against the same run in one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from reid_dhm.data.classification import CIFAR10_MEAN, CIFAR10_STD, read_cifar
from reid_dhm.engines import distributed as dist
from reid_dhm.models.checkpoint import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 cores
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if sys.platform.startswith("linux"):  # gloo on loopback: no dependence on host networking
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _run(cmd, timeout=240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------------- single process
def test_helpers_without_a_process_group():
    assert not dist.is_initialized()
    assert dist.world_size() == 1 and dist.is_main_process()
    x = torch.arange(4.0)
    assert torch.equal(dist.all_reduce_sum(x), x) and dist.all_reduce_sum(x) is not x
    assert dist.gather_concat(x) is x
    assert dist.all_reduce_dict({"b": torch.tensor(2), "a": 1.5}) == {"a": 1.5, "b": 2.0}
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_model(model, find_unused_parameters=True) is model
    assert dist.per_process_batch(32) == 32
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    dist.barrier()
    dist.cleanup()


def test_train_sampler_order_depends_on_seed_and_epoch_only():
    data = TensorDataset(torch.arange(10))
    a, b = dist.train_sampler(data, seed=4), dist.train_sampler(data, seed=4)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b)


@pytest.mark.parametrize("n", [0, 1, 5, 23])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_sampler_sees_every_sample_exactly_once(n, world):
    data = TensorDataset(torch.zeros(n))
    shards = [list(dist.ShardSampler(data, world, r)) for r in range(world)]
    assert sum(shards, []) == list(range(n))  # rank order = data order, no repeats
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [len(dist.ShardSampler(data, world, r)) for r in range(world)] == sizes


def test_per_process_batch_must_divide(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    assert dist.per_process_batch(12) == 4
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        dist.per_process_batch(16)


def test_cleanup_frees_a_finished_ddp_wrapper_before_leaving_the_group(tmp_path, monkeypatch):
    """A DDP wrapper that only a reference cycle keeps alive (as a finished run's is) is
    freed by cleanup() while Python is alive, not during the interpreter's exit."""
    import gc
    import weakref

    import torch.distributed as tdist

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    store = f"file://{tmp_path / 'store'}"
    tdist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    gc.disable()  # only cleanup() may collect
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        wrapped.cycle = [wrapped]  # like an engine and its hooks
        alive = weakref.ref(wrapped)
        del wrapped
        assert alive() is not None  # the cycle keeps it
        dist.cleanup()
        assert not tdist.is_initialized()
        assert alive() is None
    finally:
        gc.enable()
        if tdist.is_initialized():
            tdist.destroy_process_group()


# ----------------------------------------------------------------------- 2 processes
@pytest.mark.slow  # one run alone and one under torchrun: over 20 s on 2 CPU cores
def test_two_processes_give_the_same_training_as_one(tmp_path):
    """Same global batch: same per-epoch loss terms, test errors and final weights."""
    worker = str(ROOT / "tests" / "ddp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one.json")])
    _run([*TORCHRUN, "2", worker, str(tmp_path / "two.json")])
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["history"]) == len(two["history"]) == 3
    for a, b in zip(one["history"], two["history"]):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert two["history"][-1]["loss"] == pytest.approx(one["history"][-1]["loss"], rel=1e-5)
    assert two["results"]["final"] == one["results"]["final"]
    assert two["results"]["final"]["main"]["num_images"] == 23  # uneven shards, none lost
    for p, q in zip(one["params"], two["params"]):
        np.testing.assert_allclose(q, p, rtol=1e-4, atol=1e-5)
    # Features from the two evaluation shards, gathered, equal a one-pass forward.
    assert two["gathered_matches"] and two["gathered_rows"] == 23
    assert two["sums"] == {"n": 23.0, "rank": 1.0}


@pytest.mark.slow  # a 2-process torchrun launch: over 20 s on 2 CPU cores
def test_torchrun_train_py_writes_on_rank_0_and_gathers_metrics(tiny_cifar10, tmp_path):
    """tools/train.py under torchrun: rank-0 outputs; metrics over the whole test set."""
    out = tmp_path / "ddp"
    cmd = [
        *TORCHRUN, "2", "tools/train.py", "--dataset", "cifar10", "--root", str(tiny_cifar10),
        "--output-dir", str(out), "--model", "dhm_cifar_resnet20",
        "loss.mode=baseline",  # a model with branches in baseline mode: unused parameters
        "train.max_epoch=1", "data.batch_size=20", "data.test_batch_size=8",
        "data.workers=0", "optim.lr=0.02",
    ]  # fmt: skip
    proc = _run(cmd)
    assert proc.stdout.count("=> cifar10:") == 1 and "2 process(es)" in proc.stdout
    assert proc.stdout.count("epoch 1/1") == 1
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["state_dict"])
    results = json.loads((out / "results.json").read_text())
    final = results["final"]["main"]
    assert final["num_images"] == 20

    # The gathered error equals an evaluation of rank 0's checkpoint on all 20 images.
    model = model_from_checkpoint(ckpt).eval()
    images, labels, _ = read_cifar("cifar10", tiny_cifar10, train=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        predicted = model.forward_branches(x, ("main",)).logits["main"].argmax(1).numpy()
    assert final["top1_err"] == pytest.approx(100.0 * float((predicted != labels).mean()))
