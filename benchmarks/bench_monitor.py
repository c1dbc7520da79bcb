#!/usr/bin/env python
"""Cost of the gradient-consistency monitor (``train.grad_monitor_every``).

Times, interleaved in one run, a plain training step (forward, DHMLoss, backward,
optimizer step) and the monitor's measurement on the same batch (one extra forward and
one backward per branch), then states the overhead of sampling every N iterations:
monitor time / (N x step time).

    python benchmarks/bench_monitor.py                       # DHM-MobileNetV2, 128x64, batch 32
    python benchmarks/bench_monitor.py --model dhm_resnet50 --size 256x128 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reid_dhm import DHMLoss, build_model
from reid_dhm.engines.grad_monitor import GradientMonitor
from reid_dhm.engines.optim import build_optimizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dhm_mobilenetv2")
    p.add_argument("--size", default="128x64")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--every", type=int, nargs="+", default=[10, 50])
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    model = build_model(args.model, args.classes).train()
    crit = DHMLoss("dhm", label_smooth=0.1)
    opt = build_optimizer(model, "amsgrad", lr=3e-4)
    monitor = GradientMonitor(model, crit, every=1)
    x = torch.randn(args.batch, 3, h, w)
    y = torch.randint(0, args.classes, (args.batch,))

    def step():
        losses = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()

    step()  # warm-up (allocations, first-call overheads)
    monitor.measure(x, y)
    steps, measures = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        monitor.measure(x, y)
        measures.append(time.perf_counter() - t)
    s, m = statistics.median(steps), statistics.median(measures)
    print(f"{args.model} @ {h}x{w}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"training step {s:.3f} s   monitor measurement {m:.3f} s   ({m / s:.2f}x a step)")
    for n in args.every:
        print(f"grad_monitor_every={n}: +{100 * m / (n * s):.1f} % training time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
