#!/usr/bin/env python
"""GPU-first throughput, every figure a ratio measured side by side in one run.

Four parts (``--parts``), each against its floor:

* ``step``: a plain torchvision model's step (cross-entropy + AMSGrad on tensors already
  on the device) vs this toolkit's baseline / DSL / DHM step through the engine's
  ``Trainer`` (``DHMLoss``, its device-side sums, the non-finite guard), fp32 and bf16
  (where the device supports it), optionally compiled; rounds interleave the set-ups;
* ``e2e``: end-to-end training images/s through ``reid_dhm.runs.train`` (the library's
  run function: loader, augmentation, step, hooks) on a Market-layout folder it
  generates (synthreid) or ``--root``, the second epoch's time, vs the step-only rate of
  the same model, loss, amp and batch;
* ``loader``: the training loader alone (decode, augmentation, collation, the copy to
  the device; no model), images/s for each ``--workers`` count and each ``data.augment``
  path (``pil``: torchreid's transforms in the workers; ``tensor``: uint8 from the
  workers, augmentation batched on the device), vs the best end-to-end rate;
* ``eval``: ``evaluate`` (the default ranking for the device, and each ranking) vs the
  floor of the same blocks: distances + a full stable ``torch.sort`` of every row, and
  the bare distance blocks; Market size (3,368 x 15,913 x 2,048) and Market + 500k
  distractors on CUDA, small sizes on CPU.

    python benchmarks/bench_gpu.py                        # CUDA, R50 256x128 batch 64
    python benchmarks/bench_gpu.py --models resnet50,mobilenetv2 --compile none,default
    python benchmarks/bench_gpu.py --device cpu --tiny    # CPU smoke run (< ~60 s)

The table is markdown (one row per measurement: part, case, value, unit, ratio, and
what the ratio is against); ``--json`` also writes the rows. Times are the median of
``--rounds`` interleaved rounds (best of for evaluation); CUDA timings synchronise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_dhm import DHMLoss, build_model  # noqa: E402
from reid_dhm.engines.accel import prepare_model  # noqa: E402
from reid_dhm.engines.amp import autocast  # noqa: E402
from reid_dhm.engines.optim import build_optimizer  # noqa: E402
from reid_dhm.engines.trainer import Trainer  # noqa: E402
from reid_dhm.utils.device import resolve_device  # noqa: E402

ROWS: list[dict] = []
# torchvision builders of the floor, by the toolkit's (baseline) model name.
TORCHVISION = {"resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv2": "mobilenet_v2"}
MODES = (("baseline", ""), ("dsl", "dhm_"), ("dhm", "dhm_"))


def add_row(part, case, value, unit, ratio=None, against="") -> None:
    """Record (and print) one measurement; ``ratio`` = value / the reference's value."""
    row = dict(part=part, case=case, value=value, unit=unit, ratio=ratio, against=against)
    ROWS.append(row)
    shown = "" if ratio is None else f"{ratio:.3f}"
    print(f"| {part} | {case} | {value:.4g} | {unit} | {shown} | {against} |", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_modes(device: torch.device, wanted: list[str]) -> list[str]:
    """The requested precisions this device runs: bf16 on CUDA only where supported
    (CPU bf16 autocast exists but is no speed-up on most CPUs; ask for it explicitly)."""
    ok = []
    for amp in wanted:
        if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        ok.append(amp)
    return ok


# ------------------------------------------------------------------------- step
class ResidentTask:
    """A task for ``Trainer`` whose loader is the same device-resident batch ``n`` times
    (the step without any data cost)."""

    def __init__(self, images, targets, n: int):
        self.train_loader = [(images, targets)] * n

    def unpack(self, batch):
        return batch


def torchvision_step(name, classes, device, amp, channels_last):
    """A plain torchvision model: CE (label smoothing 0.1) + AMSGrad, no engine."""
    import torchvision

    model = getattr(torchvision.models, TORCHVISION[name])(num_classes=classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=5e-4, amsgrad=True)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()

    def epoch(x, y, n):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for _ in range(n):
            with autocast(amp, device):
                out = model(x)
            loss = crit(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def toolkit_step(name, mode, classes, device, amp, compile_mode):
    """This toolkit's model and loss through the engine's ``Trainer.train_epoch``, the
    model prepared as a run prepares it (channels_last on CUDA, ``train.compile``)."""
    model = prepare_model(build_model(name, classes).to(device), device, compile_mode)
    opt = build_optimizer(model, "amsgrad", lr=3e-4)
    crit = DHMLoss(mode, label_smooth=0.1)
    trainer = None

    def epoch(x, y, n):
        nonlocal trainer
        task = ResidentTask(x, y, n)
        trainer = Trainer(task, model, crit, opt, None, max_epoch=1, amp=amp)
        trainer.train_epoch(0)

    return epoch


def step_setups(args, device) -> dict:
    """{(label, model, mode, amp, compile): epoch function} of every set-up timed."""
    setups = {}
    channels_last = device.type == "cuda"
    for base in args.models:
        for amp in amp_modes(device, args.amp):
            cl = channels_last and amp != "none"
            setups[("torchvision", base, "floor", amp, "none")] = torchvision_step(
                base, args.classes, device, amp, cl
            )
            for mode, prefix in MODES:
                if mode != "baseline" and base not in args.dhm_models:
                    continue
                for comp in args.compile:
                    setups[("toolkit", base, mode, amp, comp)] = toolkit_step(
                        prefix + base, mode, args.classes, device, amp, comp
                    )
    return setups


def part_step(args, device) -> dict:
    """Images/s of every set-up; returns {(base, mode, amp, compile): images/s}."""
    x = torch.randn(args.batch, 3, args.height, args.width, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    setups = step_setups(args, device)
    for fn in setups.values():  # warm-up: cudnn autotuning, compilation, allocator
        fn(x, y, args.warmup)
    sync(device)
    times = {k: [] for k in setups}
    for _ in range(args.rounds):
        for key, fn in setups.items():
            t = time.perf_counter()
            fn(x, y, args.steps)
            sync(device)
            times[key].append(time.perf_counter() - t)
    rate = {k: args.steps * args.batch / statistics.median(v) for k, v in times.items()}
    out = {}
    for (kind, base, mode, amp, comp), r in rate.items():
        floor = rate[("torchvision", base, "floor", "none", "none")]
        prec = "fp32" if amp == "none" else amp
        if kind == "torchvision":
            case = f"torchvision {base} {prec}" + (" channels_last" if amp != "none" else "")
        else:
            case = f"{mode} {base} {prec}" + ("" if comp == "none" else f" compile={comp}")
            out[(base, mode, amp, comp)] = r
        add_row("step", case, r, "images/s", r / floor, f"torchvision {base} fp32 step")
    return out


# -------------------------------------------------------------------------- e2e
def market_folder(args, work: Path) -> Path:
    """``--root``, or a synthreid build (Market-1501 layout) of ``--train-ids`` ids."""
    if args.root:
        return Path(args.root)
    from reid_dhm.data.synthreid import SynthReIDSpec, generate_synthreid

    ids = args.train_ids
    spec = SynthReIDSpec(
        num_train_ids=ids, num_test_ids=max(3, ids // 10), num_distractors=5, num_junk=2,
        height=args.height // 2, width=args.width // 2,
    )  # fmt: skip
    return generate_synthreid(work, spec)


def run_config(args, root: Path, base: str, mode: str, amp: str, out: Path) -> dict:
    from reid_dhm.config import resolve_config

    name = base if mode == "baseline" else f"dhm_{base}"
    overrides = [
        f"model.name={name}", f"loss.mode={mode}", "model.pretrained=false",
        "train.fixbase_epoch=0", f"train.max_epoch={args.epochs}", f"train.amp={amp}",
        f"train.device={args.device}", "train.print_freq=1000000", "test.vis_queries=0",
        f"data.batch_size={args.batch}", f"data.height={args.height}",
        f"data.width={args.width}", f"data.workers={args.e2e_workers}",
        f"data.root={root}", "scheduler.name=constant", f"data.transforms={args.transforms}",
    ]  # fmt: skip
    cfg = resolve_config("folder", None, overrides)
    cfg["output_dir"] = str(out)
    return cfg


def part_e2e(args, device, work: Path, steps: dict) -> dict:
    """Images/s of the last epoch of ``runs.train`` per (model, mode, amp)."""
    from reid_dhm.runs import train

    root = market_folder(args, work)
    n_train = len(list((root / "bounding_box_train").glob("*.jpg")))
    rates = {}
    for base in args.models:
        for mode in ("baseline", "dhm"):
            if mode == "dhm" and base not in args.dhm_models:
                continue
            for amp in amp_modes(device, args.amp):
                out = work / f"run-{base}-{mode}-{amp}"
                cfg = run_config(args, root, base, mode, amp, out)
                with contextlib.redirect_stdout(io.StringIO()):
                    result = train(cfg)
                seconds = result.history[-1]["seconds"]
                rate = n_train // args.batch * args.batch / seconds
                rates[(base, mode, amp)] = rate
                step = steps.get((base, mode, amp, "none"))
                prec = "fp32" if amp == "none" else amp
                add_row(
                    "e2e", f"{mode} {base} {prec}, {args.e2e_workers} workers", rate,
                    "images/s", rate / step if step else None, f"step-only {mode} {base} {prec}",
                )  # fmt: skip
    return {"root": root, "rates": rates}


# ----------------------------------------------------------------------- loader
def part_loader(args, device, root: Path, e2e: dict) -> None:
    """One epoch of the training loader alone (no model), per worker count and
    ``data.augment`` path: images/s of augmented float batches on the device. The
    second epoch is timed (persistent workers are up by then)."""
    from reid_dhm.data.reid_manager import build_reid_datamanager
    from reid_dhm.engines.reid_loaders import reid_train_loader

    ref = max(e2e.values()) if e2e else None
    for augment in ("pil", "tensor"):
        for workers in args.workers:
            with contextlib.redirect_stdout(io.StringIO()):
                manager = build_reid_datamanager(
                    "folder", root, args.height, args.width, transforms=args.transforms,
                    batch_size=args.batch, workers=workers, pin_memory=device.type == "cuda",
                )  # fmt: skip
            sampler = reid_train_loader(manager, args.batch, augment=augment, device=device)
            seen, seconds = 0, 0.0
            for epoch in range(2):
                sampler.set_epoch(epoch)
                t, seen = time.perf_counter(), 0
                for batch in manager.train_loader:
                    images = batch["img"].to(device, non_blocking=True)
                    seen += images.shape[0]
                sync(device)
                seconds = time.perf_counter() - t
            rate = seen / seconds
            add_row(
                "loader", f"augment={augment}, {workers} workers", rate, "images/s",
                rate / ref if ref else None, "best e2e training rate" if ref else "",
            )  # fmt: skip


# ------------------------------------------------------------------------- eval
def eval_problem(nq, ng, dim, device, seed=0):
    """Market-like clustered features made on ``device``: ~750 ids, 6 cameras."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ids, latent = 750, 128

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    proj, centers = randn(latent, dim) / latent**0.5, randn(ids + 1, latent)
    q_pids = torch.arange(nq, device=device) % ids + 1
    g_pids = torch.randint(0, ids + 1, (ng,), generator=gen, device=device)
    q_cams = torch.randint(0, 6, (nq,), generator=gen, device=device)
    g_cams = torch.randint(0, 6, (ng,), generator=gen, device=device)

    def feats(pids, step=65536):
        out = torch.empty(pids.shape[0], dim, device=device)
        for s in range(0, pids.shape[0], step):
            p = pids[s : s + step]
            lat = centers[p] + 1.2 * randn(p.shape[0], latent)
            lat[p == 0] = randn(int((p == 0).sum()), latent)  # distractors: own centres
            out[s : s + step] = lat @ proj + randn(p.shape[0], dim) / dim**0.5
        return out

    return feats(q_pids), feats(g_pids), q_pids, g_pids, q_cams, g_cams


def eval_floor(qf, gf, rows: int):
    """(distances + full stable sort, distances only) over blocks of ``rows`` queries."""
    from reid_dhm.retrieval.distance import DistanceBlocks

    blocks = DistanceBlocks(gf, "euclidean")
    buf = torch.empty(min(rows, qf.shape[0]), gf.shape[0], device=qf.device)

    def with_sort():
        for s in range(0, qf.shape[0], rows):
            torch.sort(blocks(qf[s : s + rows], out=buf), dim=1, stable=True)

    def distances():
        for s in range(0, qf.shape[0], rows):
            blocks(qf[s : s + rows], out=buf)

    return with_sort, distances


def best_time(fn, device, repeats) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def part_eval(args, device) -> None:
    from reid_dhm.retrieval import evaluate
    from reid_dhm.retrieval.metrics import DEFAULT_MEMORY_BUDGET, chunk_rows
    from reid_dhm.retrieval.ranking import BYTES_PER_SORTED_ENTRY

    for label, (nq, ng, dim) in args.eval_sizes:
        prob = eval_problem(nq, ng, dim, device)
        qf, gf = prob[0], prob[1]
        rows = chunk_rows(ng, DEFAULT_MEMORY_BUDGET, None, entry_bytes=BYTES_PER_SORTED_ENTRY)
        with_sort, distances = eval_floor(qf, gf, rows)
        cases = {"floor": with_sort, "distances": distances}
        for ranking in ("auto", "scan", "sort"):
            cases[ranking] = lambda r=ranking, p=prob: evaluate(*p, device=device, ranking=r)
        for fn in cases.values():  # warm-up
            fn()
        times = {k: math.inf for k in cases}
        for _ in range(args.rounds):  # interleaved: every case sees the same machine
            for k, fn in cases.items():
                times[k] = min(times[k], best_time(fn, device, 1))
        size = f"{label} {nq}x{ng}x{dim}"
        floor = times["floor"]
        add_row("eval", f"distances + stable sort (floor), {size}", 1e3 * floor, "ms", 1.0,
                "floor")  # fmt: skip
        add_row("eval", f"distances only, {size}", 1e3 * times["distances"], "ms",
                times["distances"] / floor, "floor")  # fmt: skip
        default = "scan" if device.type == "cpu" else "sort"
        for ranking in ("auto", "scan", "sort"):
            name = f"evaluate ranking={ranking}" + (f" (={default})" if ranking == "auto" else "")
            add_row("eval", f"{name}, {size}", 1e3 * times[ranking], "ms",
                    times[ranking] / floor, "floor")  # fmt: skip
        prob = qf = gf = cases = None  # freed before the next size
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:K]")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke run)")
    p.add_argument("--parts", default="step,e2e,loader,eval")
    p.add_argument("--models", default=None, help="baseline names (default resnet50)")
    p.add_argument("--dhm-models", default=None, help="of --models, those also run as DSL/DHM")
    p.add_argument(
        "--amp", default=None, help="precisions: none (fp32), bf16 (default: both on CUDA)"
    )
    p.add_argument("--compile", default="none", help="toolkit steps: none,default,...")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--classes", type=int, default=751)
    p.add_argument("--steps", type=int, default=None, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--root", default=None, help="Market-layout folder (default: generated)")
    p.add_argument("--train-ids", type=int, default=None, help="identities of the generated set")
    p.add_argument("--epochs", type=int, default=2, help="e2e epochs (the last is timed)")
    p.add_argument("--e2e-workers", type=int, default=None)
    p.add_argument("--workers", default=None, help="loader part: worker counts")
    p.add_argument(
        "--transforms", default="random_flip,random_crop",
        help="training augmentations (e2e and loader parts)",
    )  # fmt: skip
    p.add_argument("--distractors", type=int, default=500_000)
    p.add_argument("--threads", type=int, default=None, help="CPU torch threads (tiny: 1)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    tiny = args.tiny
    defaults = dict(
        models="mobilenetv2" if tiny else "resnet50", batch=8 if tiny else 64,
        height=64 if tiny else 256, width=32 if tiny else 128, steps=2 if tiny else 20,
        train_ids=8 if tiny else 320, e2e_workers=2 if tiny else 8,
        workers="0,2" if tiny else "4,8", threads=1 if tiny else 0,
    )  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if tiny:
        args.classes, args.warmup, args.epochs = 16, 1, min(args.epochs, 2)
    args.models = args.models.split(",")
    args.dhm_models = args.dhm_models.split(",") if args.dhm_models else args.models
    args.amp = args.amp.split(",") if args.amp else None
    args.compile = args.compile.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    args.transforms = args.transforms.split(",")
    args.parts = set(args.parts.split(","))
    return args


def eval_sizes(args, device):
    if args.tiny:
        return [("small", (200, 3000, 128))]
    sizes = [("Market", (3368, 15913, 2048))]
    if device.type == "cuda":
        extra = args.distractors
        sizes.append((f"Market+{extra // 1000}k", (3368, 15913 + extra, 2048)))
    return sizes


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, supported=("cpu", "cuda"))
    args.device = str(device)
    if args.amp is None:
        args.amp = ["none", "bf16"] if device.type == "cuda" else ["none"]
    if args.threads:
        # On a shared CPU one thread per process avoids OpenMP barrier stalls.
        torch.set_num_threads(args.threads)
    args.eval_sizes = eval_sizes(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"bench_gpu on {name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}; {args.models[0]} {args.height}x{args.width}, batch "
        f"{args.batch}, {args.classes} classes\n"
    )
    print("| part | case | value | unit | ratio | ratio against |")
    print("| --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    steps = part_step(args, device) if "step" in args.parts else {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        e2e = {"root": None, "rates": {}}
        if "e2e" in args.parts:
            e2e = part_e2e(args, device, work, steps)
        if "loader" in args.parts:
            root = e2e["root"] or market_folder(args, work)
            part_loader(args, device, root, e2e["rates"])
    if "eval" in args.parts:
        part_eval(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": ROWS}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
