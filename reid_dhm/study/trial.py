"""One trial of a study, run in a process of its own (a pool worker or a Ray task).

``run_trial(job)`` trains through the library's run function (``reid_dhm.runs.train``)
into the trial's folder, with its output in ``log.txt`` there, and returns the trial's
row: status, metrics (percent), training accuracy, times, per-epoch curves. It never
raises: a failing trial is a row with ``status='failed'`` and the one-line error, so the
other trials go on. A trial folder holding an interrupted run of the same config is
resumed from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..utils.branches import MAIN

TRIAL_FILE = "trial.json"
LOG_FILE = "log.txt"
# Per-epoch history keys kept in a row for the study's mean training curves.
CURVE_KEYS = ("loss", f"acc/{MAIN}", f"ce/{MAIN}", "lr")
CURVE_PREFIXES = ("kl_trust/",)


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C-level
    output and child processes too) to ``path`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_trial(job: Mapping) -> dict:
    """Run one trial; returns its row (see the module docstring).

    Args:
        job: ``key``, ``setting``, ``variant``, ``seed``, ``task``,
            ``config`` (resolved, ``output_dir`` = the trial folder), ``threads``
            (torch threads, 0 = torch's default) and ``device`` (None or e.g.
            ``'cuda:1'``, replacing ``train.device``).
    """
    start = time.time()
    cfg = json.loads(json.dumps(job["config"]))  # a private copy
    if job.get("device"):
        cfg["train"]["device"] = job["device"]
    out = Path(cfg["output_dir"])
    row = {k: job[k] for k in ("key", "setting", "variant", "seed", "task")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        with captured_output(out / LOG_FILE):
            row.update(_train(cfg, job, out))
    except BaseException as err:  # noqa: BLE001 - a trial never stops the others
        row.update(_ended(err))
    row["seconds"] = time.time() - start
    row["host"], row["pid"] = socket.gethostname(), os.getpid()
    row["config"] = job["config"]
    if row["status"] != "interrupted":
        _write_row(out / TRIAL_FILE, row)
    return row


def _ended(err: BaseException) -> dict:
    """Status and one-line error of a trial that raised ``err``: a stop signal leaves it
    ``interrupted`` (its folder keeps the last complete epoch; the study's rerun resumes
    it), anything else ``failed``."""
    import signal

    from ..runs.errors import RunStopped, error_line

    signum = getattr(err, "signum", None) if isinstance(err, RunStopped) else None
    if isinstance(err, KeyboardInterrupt):
        signum = signal.SIGINT
    if signum is not None:
        line = f"stopped by {signal.Signals(signum).name}; rerun the study to resume it"
        return {"status": "interrupted", "error": line}
    return {"status": "failed", "error": error_line(err) or type(err).__name__}


def _train(cfg: dict, job: Mapping, out: Path) -> dict:
    import torch

    from ..runs.signals import StopSignals
    from ..runs.training import train

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    ckpt = resumable_checkpoint(out, job["config"])
    if ckpt is not None:
        print(f"=> resuming the interrupted trial from {ckpt['path']}", flush=True)
    # A stop signal (the study being stopped, or Ctrl-C reaching the whole process group)
    # ends the trial after its iteration; the study decides when to kill it.
    with StopSignals(escalate=False) as stops:
        result = train(cfg, checkpoint=ckpt, should_stop=stops)  # read once, passed on
    row = row_fields(result.results, result.history, job["task"], cfg["data"]["dataset"])
    # The epochs this process trained (the study's ETA measures seconds per epoch).
    return {**row, "start_epoch": int(ckpt.get("epoch", 0)) if ckpt is not None else 0}


def resumable_checkpoint(out: Path, config: Mapping) -> dict | None:
    """The loaded ``out/checkpoint.pth`` (``load_checkpoint``: ``path`` and ``epoch`` in
    it) when it holds an unfinished run of the same config."""
    from ..config.study import Trial
    from ..utils.checkpoint import load_checkpoint

    path = out / "checkpoint.pth"
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - a damaged checkpoint: start the trial again
        return None
    if not Trial("", "", 0, dict(config)).same_run(ckpt.get("config")):
        return None
    return ckpt


def row_fields(results: Mapping, history, task: str, dataset: str) -> dict:
    """Status, metrics (%), training accuracy, times and curves from a run's results."""
    if results.get("evaluation_error"):
        return {"status": "failed", "error": f"final evaluation: {results['evaluation_error']}"}
    if task == "reid":
        main = results[dataset][MAIN]
        metrics = {k: 100.0 * float(main[k]) for k in ("mAP", "rank1", "mINP")}
    else:
        main = results["final"][MAIN]
        metrics = {k: float(main[k]) for k in ("top1_err", "top5_err")}
    history = list(history or [])
    last = history[-1] if history else {}
    curves: dict[str, list] = {}
    for rec in history:
        for key, value in rec.items():
            if key in CURVE_KEYS or key.startswith(CURVE_PREFIXES):
                curves.setdefault(key, []).append(float(value))
    monitor = {}
    for rec in results.get("grad_monitor") or []:
        for key, value in rec.items():
            if key.startswith("grad/cos/") and key.count("/") == 2:
                monitor.setdefault(key, []).append(float(value))
    return {
        "status": "ok",
        "metrics": metrics,
        "train_acc": float(last.get(f"acc/{MAIN}", float("nan"))),
        "epochs": int(last.get("epoch", 0)),
        "train_seconds": float(sum(r.get("seconds", 0.0) for r in history)),
        "curves": curves,
        "monitor": {k: sum(v) / len(v) for k, v in monitor.items()},
    }


def _write_row(path: Path, row: Mapping) -> None:
    from ..utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(row, indent=1))


def read_row(path: Path) -> dict | None:
    """A trial folder's finished row, or None (absent or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["LOG_FILE", "TRIAL_FILE", "captured_output", "read_row", "row_fields", "run_trial"]
