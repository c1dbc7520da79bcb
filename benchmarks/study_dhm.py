#!/usr/bin/env python
"""Why and when DHM helps: baseline, DSL, DHM and DHM variants over several seeds.

Every run goes through ``tools/train.py`` in a process of its own (see ``run_one``: a
clean process per trial, on purpose) with the same budget per setting; only the model's
branches and the loss change. The gradient monitor runs in every run
(``train.grad_monitor_every``), so the table also shows how the branches' gradients on
the shared stem agree, pair by pair.

Settings:

* ``synthreid-quick``: the README quickstart (MobileNetV2 from scratch, 12 epochs);
* ``synthreid-long``: the same recipe over 40 epochs (lr /10 at 30);
* ``fashion-overfit``: Fashion-MNIST, 1,000 training images (evenly spaced), 60
  epochs, CIFAR ResNet-20 (SGD lr 0.05, warm-up 1, x0.1 at 40 and 50): a regime in
  which the baseline over-fits (training accuracy near 100 %, test error far above).

Variants: ``baseline`` (plain network, CE), ``dsl`` (CE on every branch), ``dhm``
(CE + bidirectional KL), ``dhm-mirror`` (aux branches = copies of the main path's
remaining stages), ``dhm-klwarm`` (KL weight ramped up over the first quarter of
the epochs); extra: ``dsl-mirror``, ``dhm-main`` (only the main branch teaches).

Runs that already have a ``results.json`` in ``--out`` are not rerun, so the study
can be stopped and continued. The summary goes to stdout (markdown) and ``--json``.

    python benchmarks/study_dhm.py --settings synthreid-quick --seeds 1 2 3 --out study
    python benchmarks/study_dhm.py --settings fashion-overfit synthreid-long --out study
    python benchmarks/study_dhm.py --out study --summary-only     # tables from finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "tools" / "train.py"

SETTINGS = {
    "synthreid-quick": {
        "task": "reid",
        "epochs": 12,
        "args": ["--dataset", "synthreid", "train.grad_monitor_every=10"],
    },
    "synthreid-long": {
        "task": "reid",
        "epochs": 40,
        "args": [
            "--dataset", "synthreid", "train.max_epoch=40", "scheduler.milestones=[30]",
            "train.grad_monitor_every=10",
        ],
    },
    "fashion-overfit": {
        "task": "classification",
        "epochs": 60,
        "args": [
            "--dataset", "fashion-mnist", "data.limit=1000", "data.workers=0",
            "data.batch_size=64", "train.max_epoch=60", "train.eval_freq=0",
            "optim.lr=0.05", "scheduler.name=multi_step", "scheduler.milestones=[40, 50]",
            "scheduler.warmup_epochs=1", "train.grad_monitor_every=5",
        ],
    },
}  # fmt: skip

# BoT's recipe parts on top of the quickstart recipe (issue 12): BNNeck, batch-hard triplet on
# P x K identity batches, random erasing, Adam, linear warm-up from 1 % of the lr over a tenth
# of the epochs ("{W}"), evaluation on the post-BN feature with cosine distance.
BOT = [
    "model.neck=bnneck", "loss.triplet_weight=1.0", "loss.triplet_margin=0.3",
    "data.sampler=identity", "data.num_instances=4",
    "data.transforms=[random_flip, random_crop, random_erase]", "optim.name=adam",
    "scheduler.warmup_epochs={W}", "scheduler.warmup_start=0.01", "test.feature=post_bn",
    "test.normalize_feature=true",
]  # fmt: skip
# variant -> (re-ID overrides, classification overrides); "{E}" = a quarter of the epochs.
_DHM = ("model.name=dhm_mobilenetv2", "model.name=dhm_cifar_resnet20")
VARIANTS = {
    "baseline": (["model.name=mobilenetv2", "loss.mode=baseline"],
                 ["model.name=cifar_resnet20", "loss.mode=baseline"]),
    "dsl": ([_DHM[0], "loss.mode=dsl"], [_DHM[1], "loss.mode=dsl"]),
    "dhm": ([_DHM[0], "loss.mode=dhm"], [_DHM[1], "loss.mode=dhm"]),
    "dhm-mirror": ([_DHM[0], "loss.mode=dhm", "model.branch_style=mirror"],
                   [_DHM[1], "loss.mode=dhm", "model.branch_style=mirror"]),
    "dhm-klwarm": ([_DHM[0], "loss.mode=dhm", "loss.kl_warmup_epochs={E}"],
                   [_DHM[1], "loss.mode=dhm", "loss.kl_warmup_epochs={E}"]),
    "dsl-mirror": ([_DHM[0], "loss.mode=dsl", "model.branch_style=mirror"],
                   [_DHM[1], "loss.mode=dsl", "model.branch_style=mirror"]),
    "dhm-main": ([_DHM[0], "loss.mode=dhm", "loss.kl_teachers=main"],
                 [_DHM[1], "loss.mode=dhm", "loss.kl_teachers=main"]),
    "bot-baseline": (["model.name=mobilenetv2", "loss.mode=baseline", *BOT], None),
    "bot-dsl": ([_DHM[0], "loss.mode=dsl", *BOT], None),
    "bot-dhm": ([_DHM[0], "loss.mode=dhm", *BOT], None),
}  # fmt: skip
DEFAULT_VARIANTS = ["baseline", "dsl", "dhm", "dhm-mirror", "dhm-klwarm"]


def run_one(setting: str, variant: str, seed: int, out: Path, threads: int, root: str) -> Path:
    """Train one (setting, variant, seed) unless its results already exist."""
    spec = SETTINGS[setting]
    run_dir = out / setting / f"{variant}-seed{seed}"
    if (run_dir / "results.json").is_file():
        return run_dir
    reid, cls = VARIANTS[variant]
    chosen = reid if spec["task"] == "reid" else cls
    if chosen is None:
        print(f"  {variant} is a re-ID variant; skipped for {setting}", flush=True)
        return run_dir
    epochs = spec["epochs"]
    extra = [
        a.replace("{E}", str(epochs // 4)).replace("{W}", str(max(1, epochs // 10))) for a in chosen
    ]
    cmd = [sys.executable, str(TRAIN), *spec["args"], "--output-dir", str(run_dir),
           f"train.seed={seed}", *extra]  # fmt: skip
    if spec["task"] == "reid":
        cmd.append(f"data.root={root}")
    # A subprocess on purpose, not ``reid_dhm.runs.train`` in this process: every trial
    # starts clean (OMP_NUM_THREADS set before torch loads, no allocator or thread-pool
    # state from the previous run, so the per-epoch times compared across variants are
    # like for like), a run that dies (OOM kill, a crash in a loader worker) is reported
    # and the hours-long study goes on, and each run's log holds all of its output.
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    log = run_dir.parent / f"{variant}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        print(f"  FAILED ({code}); see {log}", flush=True)
    else:
        print(f"  done in {time.time() - start:.0f} s", flush=True)
    return run_dir


def read_run(run_dir: Path, task: str) -> dict | None:
    """The numbers of one finished run: main-branch metrics, monitor means, time."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    row: dict = {}
    if task == "reid":
        main = res["synthreid"]["main"]
        row.update(mAP=100 * main["mAP"], rank1=100 * main["rank1"], mINP=100 * main["mINP"])
    else:
        row["top1_err"] = res["final"]["main"]["top1_err"]
    history = _history(run_dir)
    if history:
        last = history[-1]
        row["train_acc"] = last.get("acc/main")
        row["seconds"] = sum(h.get("seconds", 0.0) for h in history)
    monitor = res.get("grad_monitor") or []
    for key in {k for r in monitor for k in r if k.startswith("grad/cos/") and k.count("/") == 2}:
        vals = [r[key] for r in monitor if key in r]
        row[key] = sum(vals) / len(vals)
    return row


def _history(run_dir: Path) -> list[dict]:
    ckpt = run_dir / "checkpoint.pth"
    if not ckpt.is_file():
        return []
    import torch

    return list(torch.load(ckpt, map_location="cpu", weights_only=True).get("history") or [])


def _stat(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(out: Path, settings, variants, seeds) -> dict:
    summary: dict = {}
    for setting in settings:
        task = SETTINGS[setting]["task"]
        summary[setting] = {}
        for variant in variants:
            rows = [read_run(out / setting / f"{variant}-seed{s}", task) for s in seeds]
            rows = [r for r in rows if r is not None]
            if not rows:
                continue
            keys = sorted({k for r in rows for k in r})
            summary[setting][variant] = {
                "seeds": len(rows),
                **{k: _stat([r.get(k) for r in rows]) for k in keys},
                "per_seed": rows,
            }
    return summary


def markdown(summary: dict) -> str:
    lines = []
    for setting, table in summary.items():
        if not table:
            continue
        task = SETTINGS[setting]["task"]
        metrics = ["mAP", "rank1", "mINP"] if task == "reid" else ["top1_err"]
        pairs = sorted({k for v in table.values() for k in v if k.startswith("grad/cos/")})
        head = ["variant", "seeds", *metrics, f"{metrics[0]} per seed", "train acc (%)"]
        head += ["train time (s)", "s / epoch"]
        head += [p[len("grad/cos/") :] for p in pairs]
        lines += [f"### {setting}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + " --- |" * len(head))
        for variant, s in table.items():
            cells = [variant, str(s["seeds"])]
            cells += [f"{s[m][0]:.1f} +- {s[m][1]:.1f}" if m in s else "-" for m in metrics]
            cells += [", ".join(f"{r[metrics[0]]:.1f}" for r in s["per_seed"])]
            cells += [f"{s['train_acc'][0]:.1f}" if "train_acc" in s else "-"]
            cells += [f"{s['seconds'][0]:.0f}" if "seconds" in s else "-"]
            per_epoch = s["seconds"][0] / SETTINGS[setting]["epochs"] if "seconds" in s else None
            cells += [f"{per_epoch:.1f}" if per_epoch else "-"]
            cells += [f"{s[p][0]:.3f} +- {s[p][1]:.3f}" if p in s else "-" for p in pairs]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", default="study", help="run folders (kept; finished runs are reused)")
    p.add_argument("--root", default="reid-data", help="where synthreid is (or gets) written")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: default)")
    p.add_argument("--summary-only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.summary_only:
        # Seed-major order: a stopped study still has whole seeds of every variant.
        for seed in args.seeds:
            for setting in args.settings:
                for variant in args.variants:
                    run_one(setting, variant, seed, out, args.threads, args.root)
    summary = summarize(out, args.settings, args.variants, args.seeds)
    print(markdown(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
