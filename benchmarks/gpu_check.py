#!/usr/bin/env python
"""GPU smoke check: every CUDA path of the toolkit, in a few minutes, with a verdict each.

    python benchmarks/gpu_check.py                 # on a machine with CUDA
    python benchmarks/gpu_check.py --quick         # skip the two training runs

Checks (each PASS / FAIL with its numbers):

1. ``evaluate`` on CUDA vs CPU: identical mAP / mINP / CMC on a 2,000 x 20,000 problem;
2. ``GalleryIndex`` (flat, ivf) with faiss on the GPU vs the CPU: the same neighbours;
3. ``FeatureExtractor`` on CUDA vs CPU: the same embeddings (cosine);
4. one synthreid training epoch on CUDA with AMP (``train.amp=bf16`` and ``fp16``), in
   this process through ``reid_dhm.runs.train``;
5. one DDP step through ``torchrun --nproc_per_node 1`` on the NCCL backend (a
   subprocess: launching through torchrun is what it checks).

On a machine without CUDA it says so and exits 0 (nothing to check). Results go to
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
from pathlib import Path

import numpy as np
import torch

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.time()
            try:
                detail = fn(*args, **kwargs)
                RESULTS.append((name, True, f"{detail} ({time.time() - start:.1f} s)"))
            except Exception as err:  # noqa: BLE001 - report every failure, keep going
                traceback.print_exc()
                RESULTS.append((name, False, f"{type(err).__name__}: {err}"))

        return run

    return wrap


@check("evaluate: CUDA == CPU")
def evaluate_cuda_vs_cpu():
    from reid_dhm.retrieval import evaluate

    rng = np.random.default_rng(0)
    q, g, d = 2000, 20000, 256
    qf, gf = rng.normal(size=(q, d)).astype(np.float32), rng.normal(size=(g, d)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 700, q), rng.integers(0, 700, g)
    q_cams, g_cams = rng.integers(0, 6, q), rng.integers(0, 6, g)
    out = {}
    for dev in ("cpu", "cuda"):
        start = time.time()
        out[dev] = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, device=dev)
        out[dev]["seconds"] = time.time() - start
    a, b = out["cpu"], out["cuda"]
    assert abs(a["mAP"] - b["mAP"]) < 1e-6 and abs(a["mINP"] - b["mINP"]) < 1e-6, (a, b)
    assert np.array_equal(a["cmc"], b["cmc"])
    return (f"mAP {100 * a['mAP']:.3f} both; cpu {a['seconds']:.2f} s, cuda "
            f"{b['seconds']:.2f} s")  # fmt: skip


@check("GalleryIndex: faiss GPU == CPU")
def gallery_index_gpu_vs_cpu():
    import faiss

    from reid_dhm.retrieval import GalleryIndex

    assert faiss.get_num_gpus() > 0, "faiss sees no GPU"
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
def extractor_cuda_vs_cpu():
    from reid_dhm import FeatureExtractor, build_model

    torch.manual_seed(0)
    model = build_model("dhm_resnet50", 751)
    images = [np.random.default_rng(i).integers(0, 256, (300, 140, 3), np.uint8) for i in range(32)]
    a = FeatureExtractor(model, device="cpu")(images)
    b = FeatureExtractor(model, device="cuda")(images)
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    assert cos > 0.9999, cos
    return f"lowest cosine {cos:.6f}"


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


@check("re-ID epoch on CUDA, AMP bf16 and fp16")
def amp_epochs(work: Path):
    lines = []
    for amp in ("bf16", "fp16"):
        res = train_once(work, amp, f"train.amp={amp}")
        assert 0 <= res["mAP"] <= 1
        lines.append(f"{amp}: mAP {100 * res['mAP']:.1f} after 1 epoch")
    return "; ".join(lines)


@check("DDP on NCCL, torchrun --nproc_per_node 1")
def ddp_nccl(work: Path):
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
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA device; it needs a GPU (nothing to check)")
        return 0
    print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    evaluate_cuda_vs_cpu()
    gallery_index_gpu_vs_cpu()
    extractor_cuda_vs_cpu()
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            amp_epochs(work)
            ddp_nccl(work)
    width = max(len(name) for name, _, _ in RESULTS)
    for name, ok, detail in RESULTS:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    return 0 if all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
