#!/usr/bin/env python
"""Training cost of DHM vs DSL vs baseline, measured side by side in one run.

Seconds per training iteration (forward, DHMLoss, backward, AMSGrad step) for
ResNet-50 at 256x128, batch 32, on this machine's CPU, next to the forward-FLOP
ratio that ``tools/summary.py`` reports. The three set-ups are timed round-robin
(each round runs every set-up once) so that machine noise hits them alike; the
median over rounds is reported. Target: DHM/baseline time ratio <= 1.1 x the FLOP
ratio (DHM adds branch compute and nothing else that costs).

    python benchmarks/bench_train.py                  # R50, 256x128, batch 32
    python benchmarks/bench_train.py --quick          # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reid_dhm import DHMLoss, build_model
from reid_dhm.engines.optim import build_optimizer
from reid_dhm.models.complexity import branch_costs


def make_setup(name: str, mode: str, num_classes: int):
    model = build_model(name, num_classes).train()
    return model, build_optimizer(model, "amsgrad", lr=3e-4), DHMLoss(mode, label_smooth=0.1)


def step(setup, x, y) -> None:
    model, opt, crit = setup
    losses = crit(model(x), y)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    opt.step()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="depth family: resnet50, resnet18, ...")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=751)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="resnet18, 64x32, batch 8, 3 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.height, args.width, args.batch, args.rounds = "resnet18", 64, 32, 8, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (args.height, args.width)
    setups = {
        "baseline": make_setup(args.model, "baseline", args.num_classes),
        "dsl": make_setup(f"dhm_{args.model}", "dsl", args.num_classes),
        "dhm": make_setup(f"dhm_{args.model}", "dhm", args.num_classes),
    }
    costs = branch_costs(setups["dhm"][0], size)
    flop_ratio = costs["train"]["flops"] / costs["main"]["flops"]
    x = torch.randn(args.batch, 3, *size)
    y = torch.randint(0, args.num_classes, (args.batch,))
    for setup in setups.values():
        for _ in range(args.warmup):
            step(setup, x, y)
    times = {k: [] for k in setups}
    for r in range(args.rounds):
        for name, setup in setups.items():
            t = time.perf_counter()
            step(setup, x, y)
            times[name].append(time.perf_counter() - t)
        print(
            f"round {r + 1}/{args.rounds}: "
            + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n{args.model} @ {args.height}x{args.width}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print(f"{'setup':<10}{'s/iter':>9}{'vs baseline':>13}")
    for name, t in med.items():
        print(f"{name:<10}{t:>9.3f}{t / med['baseline']:>12.2f}x")
    ratio = med["dhm"] / med["baseline"]
    print(f"forward FLOP ratio train/deploy (tools/summary.py): {flop_ratio:.2f}x")
    print(
        f"DHM/baseline time ratio {ratio:.2f}x = {ratio / flop_ratio:.2f} x the FLOP ratio "
        f"(target <= 1.10): {'OK' if ratio <= 1.1 * flop_ratio else 'ABOVE TARGET'}"
    )
    print(f"DHM/DSL time ratio {med['dhm'] / med['dsl']:.2f}x (the KL terms' cost)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
