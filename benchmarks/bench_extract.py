#!/usr/bin/env python
"""Feature-extraction speed: reid-dhm's FeatureExtractor vs torchreid's vs ONNX Runtime.

Same network (the deployed main branch of a DHM model, which is torchreid's
``mobilenetv2_x1_0`` / ``resnet50``), same weights, same 256x128 input, same batch
size, timed round-robin in one run (median of the rounds), in images per second:

* from JPEG files on disk (person crops of varied sizes, decoded and resized);
* from in-memory RGB arrays (what a tracker hands over);
* the network alone on ready input batches: PyTorch eager vs the exported ONNX graph
  in ONNX Runtime (CPU execution provider);
* end to end from arrays with ONNX Runtime behind FeatureExtractor's preprocessing.

Also checks that the three give the same embeddings (cosine).

    python benchmarks/bench_extract.py                         # mobilenetv2, 256 images
    python benchmarks/bench_extract.py --model resnet50 --images 128 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_crops(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEG person-crop-like images of varied sizes (textured, so JPEG work is real)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h = int(rng.integers(128, 384))
        w = int(h * rng.uniform(0.35, 0.6))
        base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn, rounds_out: list) -> None:
    start = time.perf_counter()
    fn()
    rounds_out.append(time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2", choices=("mobilenetv2", "resnet50"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch / ORT threads (0: default)")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from torchreid.reid.utils import FeatureExtractor as TorchreidExtractor

    from reid_dhm import FeatureExtractor, build_model
    from reid_dhm.export import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(f"dhm_{args.model}", 751, pretrained=False).eval()
    plain = model.deploy()
    name = plain.torchreid_name
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    weights = work / "deployed.pth"
    torch.save(plain.state_dict(), weights)
    paths = make_crops(work, args.images)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    onnx_path = work / "model.onnx"
    export_onnx(model, onnx_path, (256, 128))

    ours = FeatureExtractor(model, image_size=(256, 128), batch_size=args.batch, device="cpu")
    theirs = TorchreidExtractor(name, str(weights), (256, 128), device="cpu", verbose=False)
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def chunks(items):
        return [items[i : i + args.batch] for i in range(0, len(items), args.batch)]

    def torchreid_run(items):
        return torch.cat([theirs([str(x) if isinstance(x, Path) else x for x in c])
                          for c in chunks(items)])  # fmt: skip

    batches = [torch.stack([ours.preprocess(a) for a in c]) for c in chunks(arrays)]

    def torch_net():
        with torch.inference_mode():
            return torch.cat([ours.model(b) for b in batches])

    def ort_net():
        return np.concatenate([session.run(None, {"images": b.numpy()})[0] for b in batches])

    def ort_end_to_end():
        out = []
        for c in chunks(arrays):
            x = np.stack([ours.preprocess(a).numpy() for a in c])
            out.append(session.run(None, {"images": x})[0])
        return np.concatenate(out)

    cases = {
        "FeatureExtractor, JPEG files": lambda: ours([str(x) for x in paths]),
        "torchreid FeatureExtractor, JPEG files": lambda: torchreid_run(paths),
        "FeatureExtractor, RGB arrays": lambda: ours(arrays),
        "torchreid FeatureExtractor, RGB arrays": lambda: torchreid_run(arrays),
        "network only, PyTorch eager": torch_net,
        "network only, ONNX Runtime": ort_net,
        "ONNX Runtime + FeatureExtractor preprocessing, arrays": ort_end_to_end,
    }
    # Agreement first (also a warm-up of every path).
    ref = ours(arrays).numpy()

    def cos(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    agree = {
        "torchreid, files": cos(ref, torchreid_run(paths)),
        "torchreid, arrays": cos(ref, torchreid_run(arrays)),
        "ONNX Runtime": cos(ref, ort_end_to_end()),
    }
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for key, fn in cases.items():
            timed(fn, times[key])
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    print(
        f"{name} (deployed dhm_{args.model}) at 256x128, {args.images} images, batch {args.batch}, "
        f"{torch.get_num_threads()} torch threads, median of {args.rounds} interleaved rounds"
    )
    print(f"{'case':<56}{'images/s':>10}")
    for key, value in rate.items():
        print(f"{key:<56}{value:>10.1f}")
    keys = list(cases)
    print("ratios:")
    for label, a, b in (
        ("FeatureExtractor / torchreid, files", 0, 1),
        ("FeatureExtractor / torchreid, arrays", 2, 3),
        ("ONNX Runtime / PyTorch, network only", 5, 4),
        ("ONNX Runtime / PyTorch, from arrays", 6, 2),
    ):
        print(f"  {label:<38}: {rate[keys[a]] / rate[keys[b]]:.2f}x")
    print("agreement (lowest cosine to FeatureExtractor): "
          + ", ".join(f"{k} {v:.6f}" for k, v in agree.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
