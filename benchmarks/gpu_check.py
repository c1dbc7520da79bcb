#!/usr/bin/env python
"""GPU smoke check: every CUDA path of the toolkit, in a few minutes, with a verdict each.

    python benchmarks/gpu_check.py                 # on a machine with CUDA
    python benchmarks/gpu_check.py --quick         # skip the training runs
    python benchmarks/gpu_check.py --dry-run       # the CPU-safe parts, on the CPU

Checks (each PASS / FAIL / SKIP with its numbers):

1. ``evaluate`` on CUDA (the sort ranking) vs the numpy scan on CPU: identical mAP /
   mINP / CMC and per-query AP on a 2,000 x 20,000 problem with ties;
2. ``evaluate``'s host syncs do not grow with the number of blocks (counted with
   ``torch.cuda.set_sync_debug_mode('warn')``), and at Market size (3,368 x 15,913 x
   2,048) it takes at most 1.5x the distances + stable sort floor, its peak memory
   within its budget;
3. ``GalleryIndex`` (flat, ivf) with faiss on the GPU vs the CPU: the same neighbours
   (SKIP when the installed faiss has no GPU support);
4. ``FeatureExtractor`` on CUDA vs CPU: the same embeddings (cosine);
5. tensor augmentation on CUDA (``data.augment=tensor``) vs torchreid's PIL transform:
   bit-identical images for the same draws;
6. a training epoch of the re-ID loop (DeviceLoader, tensor augmentation, the
   Trainer's step and hooks) under ``torch.cuda.set_sync_debug_mode('error')`` except
   at the print interval and the epoch end: no host sync in between;
7. one synthreid epoch through ``reid_dhm.runs.train`` with the GPU defaults
   (``train.amp=auto`` -> bf16 where supported, ``data.augment=auto`` -> tensor,
   channels_last), then with ``train.amp=bf16`` / ``fp16`` and ``train.compile=default``
   / ``reduce-overhead``;
8. one DDP step through ``torchrun --nproc_per_node 1`` on the NCCL backend.

Without CUDA it prints one line saying so and exits 0; ``--dry-run`` then runs the
checks that have a CPU form on the CPU (1, 5; the rest SKIP). Results go to
docs/BENCHMARKS.md by hand, with the date and the GPU's name.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: list[tuple[str, str, str]] = []


class Skip(Exception):
    """A check that cannot run here (says why)."""


def check(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.time()
            try:
                detail = fn(*args, **kwargs)
                RESULTS.append((name, "PASS", f"{detail} ({time.time() - start:.1f} s)"))
            except Skip as why:
                RESULTS.append((name, "SKIP", str(why)))
            except Exception as err:  # noqa: BLE001 - report every failure, keep going
                traceback.print_exc()
                RESULTS.append((name, "FAIL", f"{type(err).__name__}: {err}"))

        return run

    return wrap


def needs_cuda(dev: torch.device, what: str) -> None:
    if dev.type != "cuda":
        raise Skip(f"needs CUDA ({what})")


def tied_problem(q=2000, g=20000, d=64, seed=0):
    """Small-integer features (many exactly tied distances), junk, pid -1 entries."""
    rng = np.random.default_rng(seed)
    qf = rng.integers(-2, 3, (q, d)).astype(np.float32)
    gf = rng.integers(-2, 3, (g, d)).astype(np.float32)
    gf[: q // 4] = qf[: q // 4]  # exact duplicates
    q_pids, g_pids = rng.integers(-1, 700, q), rng.integers(-1, 700, g)
    q_cams, g_cams = rng.integers(0, 6, q), rng.integers(0, 6, g)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


@check("evaluate: sort path on the device == numpy scan on CPU")
def evaluate_cuda_vs_cpu(dev: torch.device):
    from reid_dhm.retrieval import evaluate

    prob = tied_problem()
    out = {}
    for name, device, ranking in (("scan", "cpu", "scan"), ("sort", dev, "auto" if
                                   dev.type == "cuda" else "sort")):  # fmt: skip
        start = time.time()
        out[name] = evaluate(*prob, device=device, ranking=ranking, chunk_size=700)
        out[name]["seconds"] = time.time() - start
    a, b = out["scan"], out["sort"]
    assert abs(a["mAP"] - b["mAP"]) < 1e-12 and abs(a["mINP"] - b["mINP"]) < 1e-12, (a, b)
    assert np.array_equal(a["cmc"], b["cmc"]) and np.array_equal(a["valid"], b["valid"])
    assert np.allclose(a["AP"], b["AP"], rtol=0, atol=1e-12, equal_nan=True)
    return (f"mAP {100 * a['mAP']:.3f} both; scan on cpu {a['seconds']:.2f} s, sort on "
            f"{dev.type} {b['seconds']:.2f} s")  # fmt: skip


def count_syncs(fn) -> int:
    """Host syncs during ``fn()``: the warnings of ``set_sync_debug_mode('warn')``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@check("evaluate on CUDA: syncs per call, time vs the distance + sort floor, memory")
def evaluate_near_floor(dev: torch.device):
    needs_cuda(dev, "CUDA timings and sync counts")
    from bench_gpu import best_time, eval_floor, eval_problem

    from reid_dhm.retrieval import evaluate
    from reid_dhm.retrieval.metrics import DEFAULT_MEMORY_BUDGET, chunk_rows
    from reid_dhm.retrieval.ranking import BYTES_PER_SORTED_ENTRY

    prob = eval_problem(3368, 15913, 2048, dev)
    few = count_syncs(lambda: evaluate(*prob, chunk_size=3368))
    many = count_syncs(lambda: evaluate(*prob, chunk_size=100))  # 34 blocks
    assert many == few, f"{few} syncs in 1 block, {many} in 34: per-block syncs remain"
    rows = chunk_rows(15913, DEFAULT_MEMORY_BUDGET, None, entry_bytes=BYTES_PER_SORTED_ENTRY)
    with_sort, _ = eval_floor(prob[0], prob[1], rows)
    evaluate(*prob)  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ours = best_time(lambda: evaluate(*prob), dev, 5)
    peak = torch.cuda.max_memory_allocated() - base
    floor = best_time(with_sort, dev, 5)
    ratio = ours / floor
    assert ratio <= 1.5, f"evaluate {1e3 * ours:.1f} ms = {ratio:.2f}x the floor (target 1.5x)"
    assert peak <= 1.25 * DEFAULT_MEMORY_BUDGET, f"peak {peak / 2**20:.0f} MiB over budget"
    return (f"{few} syncs per call whatever the blocks; Market size {1e3 * ours:.1f} ms vs "
            f"floor {1e3 * floor:.1f} ms ({ratio:.2f}x); peak {peak / 2**20:.0f} MiB for "
            f"a {DEFAULT_MEMORY_BUDGET / 2**20:.0f} MiB budget")  # fmt: skip


@check("GalleryIndex: faiss GPU == CPU")
def gallery_index_gpu_vs_cpu(dev: torch.device):
    needs_cuda(dev, "faiss GPU indexes")
    import faiss

    from reid_dhm.retrieval import GalleryIndex

    if not hasattr(faiss, "StandardGpuResources"):
        raise Skip(f"the installed faiss {faiss.__version__} has no GPU support (faiss-cpu)")
    if faiss.get_num_gpus() == 0:
        raise Skip("faiss sees no GPU (its CUDA libraries may not match the driver)")
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(50000, 128)).astype(np.float32)
    queries = rng.normal(size=(500, 128)).astype(np.float32)
    lines = []
    for kind, params in (("flat", {}), ("ivf", {"nlist": 256, "nprobe": 256})):
        found = {}
        for dev in ("cpu", "cuda"):
            index = GalleryIndex(128, "euclidean", kind, dev, **params)
            index.add(gallery)
            if index.needs_training:
                index.train()
            found[dev] = index.search(queries, 10).indices
        same = float((found["cpu"] == found["cuda"]).mean())
        assert same > 0.99, f"{kind}: only {100 * same:.1f} % of neighbours agree"
        lines.append(f"{kind} {100 * same:.2f} % same neighbours")
    return "; ".join(lines)


@check("FeatureExtractor: CUDA == CPU")
def extractor_cuda_vs_cpu(dev: torch.device):
    needs_cuda(dev, "a CUDA model")
    from reid_dhm import FeatureExtractor, build_model

    torch.manual_seed(0)
    model = build_model("dhm_resnet50", 751)
    images = [np.random.default_rng(i).integers(0, 256, (300, 140, 3), np.uint8) for i in range(32)]
    a = FeatureExtractor(model, device="cpu")(images)
    b = FeatureExtractor(model, device="cuda")(images)
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    assert cos > 0.9999, cos
    return f"lowest cosine {cos:.6f}"


@check("tensor augmentation on the device == torchreid's PIL transform")
def device_augment(dev: torch.device):
    import random

    from PIL import Image
    from torchvision.transforms import Compose

    from reid_dhm.data.device_augment import BatchAugment, WorkerTransform, torchreid_train_steps
    from reid_dhm.engines.seeding import sample_seed

    names = ["random_flip", "random_crop", "color_jitter", "random_erase"]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (300, 140, 3), np.uint8)) for _ in range(8)]
    steps = torchreid_train_steps(256, 128, names, mean, std)
    pil, worker, batch = Compose(list(steps.values())), WorkerTransform(steps), BatchAugment(steps)
    want, u8, params = [], [], []
    for i in range(256):
        s = sample_seed(0, 0, i)
        for draw in (True, False):  # same seed for both paths
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            if draw:
                want.append(pil(images[i % 8].copy()))
            else:
                a, b = worker(images[i % 8].copy())
                u8.append(a)
                params.append(b)
    got = batch(torch.stack(u8).to(dev), torch.stack(params).to(dev)).cpu()
    diff = float((got - torch.stack(want)).abs().max())
    assert diff == 0.0, f"max |difference| {diff:.3g} (normalised units)"
    return f"256 images at 256x128 bit-identical on {dev.type}"


def sync_guard(print_freq: int):
    """A Trainer hook: ``set_sync_debug_mode('error')`` from each iteration's
    ``before_step`` on, except print iterations and the last one (the epoch-end reads),
    so the loader, the copy, the augmentation, the step and the hooks of every other
    iteration raise on a host sync. First in the hook list."""
    from reid_dhm.engines.trainer import HookBase

    class SyncGuard(HookBase):
        checked = 0

        def before_step(self, images, targets) -> None:
            t = self.trainer
            due = (t.step + 1) % print_freq == 0 or t.step + 1 == t.num_batches
            torch.cuda.set_sync_debug_mode("default" if due else "error")
            self.checked += not due

    return SyncGuard()


@check("re-ID training epoch without host syncs outside the print interval")
def sync_free_epoch(dev: torch.device, work: Path):
    needs_cuda(dev, "torch.cuda.set_sync_debug_mode")
    from reid_dhm import DHMLoss, build_model
    from reid_dhm.data.reid_manager import build_reid_datamanager
    from reid_dhm.data.synthreid import SynthReIDSpec, generate_synthreid
    from reid_dhm.engines.accel import prepare_model
    from reid_dhm.engines.hooks import standard_hooks
    from reid_dhm.engines.optim import build_optimizer
    from reid_dhm.engines.reid_loaders import reid_train_loader
    from reid_dhm.engines.reid_task import ReidTask
    from reid_dhm.engines.trainer import Trainer

    with contextlib.redirect_stdout(io.StringIO()):
        root = generate_synthreid(work / "sync", SynthReIDSpec(num_train_ids=60))
        manager = build_reid_datamanager("folder", root, batch_size=32, workers=4, pin_memory=True)
    reid_train_loader(manager, 32, augment="auto", device=dev)  # tensor augmentation
    model = prepare_model(build_model("dhm_resnet18", manager.num_train_pids).to(dev), dev)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last), (
        "prepare_model did not make the model channels_last on CUDA"
    )
    guard, print_freq = sync_guard(5), 5
    hooks = [guard, *standard_hooks(save_dir=None, model_name="m", config=None, is_main=True,
                                     print_freq=print_freq)]  # fmt: skip
    trainer = Trainer(ReidTask(manager, device=dev), model, DHMLoss("dhm"),
                      build_optimizer(model), max_epoch=2, amp="auto", hooks=hooks)  # fmt: skip
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for epoch in range(2):
                trainer.train_epoch(epoch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.checked > 0, "no iteration was checked"
    return (f"{guard.checked} iterations (loader, copy, tensor augmentation, step, hooks) "
            "ran in 'error' mode without a host sync")  # fmt: skip


def train_once(work: Path, name: str, *extra: str) -> dict:
    """One synthreid epoch on CUDA, in this process; the main branch's metrics."""
    from reid_dhm.config import resolve_config
    from reid_dhm.runs import train

    overrides = ["train.max_epoch=1", "train.device=cuda", "test.vis_queries=0", *extra]
    cfg = resolve_config("synthreid", None, [*overrides, f"data.root={work / 'data'}"])
    cfg["output_dir"] = str(work / name)
    with contextlib.redirect_stdout(io.StringIO()):  # the run's console lines
        result = train(cfg)
    written = json.loads((work / name / "results.json").read_text())
    assert written == result.results, "results.json differs from the RunResult"
    return result.results["synthreid"]["main"]


@check("re-ID epochs on CUDA: GPU defaults, AMP bf16 / fp16, torch.compile")
def training_epochs(dev: torch.device, work: Path):
    needs_cuda(dev, "CUDA training runs")
    from reid_dhm.engines.amp import resolve_amp

    lines = [f"amp=auto -> {resolve_amp('auto', dev)}"]
    for name, extra in (("defaults", ()), ("bf16", ("train.amp=bf16",)),
                        ("fp16", ("train.amp=fp16",)), ("compile", ("train.compile=default",)),
                        ("graphs", ("train.compile=reduce-overhead",))):  # fmt: skip
        start = time.time()
        res = train_once(work, name, *extra)
        assert 0 <= res["mAP"] <= 1
        lines.append(f"{name}: mAP {100 * res['mAP']:.1f} ({time.time() - start:.0f} s)")
    return "; ".join(lines)


def write_cifar10(root: Path, n: int = 256) -> Path:
    """A CIFAR-10 folder in the real pickle layout (random images; the check is the path)."""
    import pickle

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return root


@check("classification epoch on CUDA through the DeviceLoader")
def classification_epoch(dev: torch.device, work: Path):
    needs_cuda(dev, "a CUDA classification run")
    from reid_dhm.config import resolve_config
    from reid_dhm.runs import train

    root = write_cifar10(work / "cifar")
    overrides = [f"data.root={root}", "model.name=dhm_cifar_resnet20", "train.max_epoch=1",
                 "train.device=cuda", "data.batch_size=64", "data.workers=2"]  # fmt: skip
    cfg = resolve_config("cifar10", None, overrides)
    cfg["output_dir"] = str(work / "cifar_run")
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg)
    final = result.results["final"]["main"]
    assert final["num_images"] == 256 and 0 <= final["top1_err"] <= 100, final
    return f"one epoch of 1,280 images, test top-1 error {final['top1_err']:.1f} % (random labels)"


@check("DDP on NCCL, torchrun --nproc_per_node 1")
def ddp_nccl(dev: torch.device, work: Path):
    needs_cuda(dev, "NCCL")
    # A subprocess on purpose: torchrun's launch and the NCCL process group are the check.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m",
           "reid_dhm", "train", "--dataset", "synthreid", "--root", str(work / "data"),
           "--output-dir", str(work / "ddp"), "train.max_epoch=1", "train.device=cuda",
           "test.vis_queries=0"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 process(es) on cuda" in done.stdout, done.stdout[-500:]
    return "trained and evaluated one epoch"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the training runs")
    p.add_argument("--dry-run", action="store_true", help="the CPU-safe checks, on the CPU")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: no CUDA device (nothing to check; --dry-run runs the CPU-safe parts)")
        return 0
    dev = torch.device("cpu" if args.dry_run else "cuda")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU (dry run)"
    print(f"gpu_check on {name}, torch {torch.__version__}")
    evaluate_cuda_vs_cpu(dev)
    evaluate_near_floor(dev)
    gallery_index_gpu_vs_cpu(dev)
    extractor_cuda_vs_cpu(dev)
    device_augment(dev)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sync_free_epoch(dev, work)
        if not args.quick:
            training_epochs(dev, work)
            classification_epoch(dev, work)
            ddp_nccl(dev, work)
    width = max(len(name) for name, _, _ in RESULTS)
    for name, verdict, detail in RESULTS:
        print(f"{verdict}  {name:<{width}}  {detail}")
    return 0 if all(verdict != "FAIL" for _, verdict, _ in RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
