"""The run folder: where a run writes, what it finds there, and what it never overwrites."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ..utils.checkpoint import load_checkpoint
from ..utils.io import atomic_write_text, check_output_dir, yaml_text
from .errors import UsageError, error_line

CHECKPOINT_NAMES = ("checkpoint.pth", "checkpoint.prev.pth")
# Files that show a folder holds a run (seed<i>/ folders: a --seeds run).
RUN_MARKERS = ("config.yaml", "checkpoint.pth", "seeds.json", "seed0/config.yaml")
EVAL_DIR = "eval"


def default_output_dir(cfg: Mapping) -> Path:
    """``log/<dataset>/<model>-<mode>``."""
    return Path("log") / cfg["data"]["dataset"] / f"{cfg['model']['name']}-{cfg['loss']['mode']}"


def write_config(cfg: Mapping, out_dir: Path, evaluated: str | None = None) -> Path:
    """``out_dir/config.yaml``; an evaluation's names the checkpoint it evaluated."""
    path = out_dir / "config.yaml"
    head = f"# evaluation of {evaluated}\n" if evaluated else ""
    atomic_write_text(path, head + yaml_text(cfg))
    return path


def find_resume_checkpoint(folder: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest valid checkpoint in a run folder (``checkpoint.pth`` and the previous
    epoch's ``checkpoint.prev.pth``); a damaged one is skipped with a warning.

    Returns:
        Its path, or None when the folder holds no readable checkpoint.
    """
    best, best_epoch = None, -1
    for name in CHECKPOINT_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            epoch = int(load_checkpoint(path).get("epoch") or 0)
        except ValueError as err:
            warn(f"warning: skipping {path}: {error_line(err)}")
            continue
        if epoch > best_epoch:
            best, best_epoch = path, epoch
    return best


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that were interrupted (``.<name>.*.tmp``).

    ``atomic_write`` writes beside the target and renames; a kill in between leaves the
    temporary file (for a checkpoint, hundreds of MB). Called at the start of a run in
    that folder, when no write of this run can be under way.
    """
    removed = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def set_aside_earlier_run(out: Path) -> Path | None:
    """Rename a folder that holds an earlier run, so a new run never overwrites it.

    A fresh training run into ``out`` would replace the checkpoint, config and results
    found there; the earlier run is kept as ``out.<time of its last write>`` instead.

    Returns:
        The earlier run's new path, or None when ``out`` held no run.
    """
    found = [out / m for m in RUN_MARKERS if (out / m).is_file()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(f.stat().st_mtime for f in found)))
    target, n = out.with_name(f"{out.name}.{stamp}"), 1
    while target.exists():
        target, n = out.with_name(f"{out.name}.{stamp}-{n}"), n + 1
    out.rename(target)
    return target


def keep_earlier_run(out: Path, resume: str | None, eval_only: bool) -> Path | None:
    """A new training run into a folder that holds another run moves that run aside.

    Resuming in the checkpoint's own folder continues that run, and evaluations write
    into ``eval/``, so neither moves anything.
    """
    if eval_only or (resume and out.resolve() == Path(resume).resolve().parent):
        return None
    moved = set_aside_earlier_run(out)
    if moved is not None:
        print(f"=> {out} held an earlier run; kept it as {moved}", flush=True)
    return moved


# Run folders this process holds the lock of: {resolved folder: open lock file}.
_HELD: dict[Path, int] = {}


def lock_path(out: Path) -> Path:
    """``<parent>/.<name>.lock``, beside the folder: the lock must stay put when
    :func:`set_aside_earlier_run` renames the folder (the earlier run moves, the lock not)."""
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def run_folder_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder ``out`` while the block runs.

    A second run into the same folder (another process) fails at once with one line
    naming the first one's PID. The lock is an ``flock`` on a file beside the folder,
    so the kernel drops it when its process ends, however it ends: a killed run leaves
    no stale lock. Re-entrant within a process (the command line and ``train`` both
    take it). The folder is checked for writing first (one line when it cannot be).

    Raises:
        UsageError: another process holds the lock.
        OutputError: ``out`` is a file, or cannot be written.
    """
    import fcntl

    out = check_output_dir(out)
    key = out.resolve()
    if key in _HELD:
        yield out
        return
    path = lock_path(key)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"{out} is in use by another run (PID {holder}, lock {path}); wait for it to end, "
            "or choose another --output-dir"
        ) from None
    # The PID is written only once the lock is ours (never truncating another's).
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    try:
        yield out
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def final_evaluation_done(checkpoint: str | os.PathLike) -> bool:
    """Whether the run of ``checkpoint`` finished its final evaluation.

    A run writes ``results.json`` beside its checkpoint after the final evaluation (or
    with ``evaluation_error`` when it failed); a kill during that evaluation leaves
    none. A checkpoint that trained every epoch but was never evaluated is finished by
    evaluating it into its own folder, not into ``eval/``.
    """
    results = Path(checkpoint).parent / "results.json"
    try:
        written = json.loads(results.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and "evaluation_error" not in written


def needs_final_evaluation(ckpt: Mapping) -> bool:
    """A reid_dhm checkpoint (it has a training history) of a run that trained every
    epoch but never completed its final evaluation (:func:`final_evaluation_done`)."""
    path = ckpt.get("path")
    return bool(ckpt.get("history")) and path is not None and not final_evaluation_done(path)


def interrupted_line(stop, out: Path, done: int) -> str:
    """The one line a stop signal ends a training run with."""
    name = signal.Signals(stop.signum).name
    if getattr(stop, "evaluating", False):
        return evaluation_stopped_line(name, out, done)
    where = f"{name} in epoch {stop.epoch} after iteration {stop.iteration}"
    if done <= 0:
        return f"stopped by {where}: no epoch was complete yet, so there is nothing to resume"
    return (
        f"stopped by {where}: {out / 'checkpoint.pth'} holds epoch {done} complete (the "
        f"partial epoch is not kept); resume with: reid-dhm train --resume {out}"
    )


def evaluation_stopped_line(name: str, out: Path, done: int) -> str:
    """The one line a stop signal during an evaluation ends a training run with."""
    if done <= 0:
        return f"stopped by {name} during the evaluation: no epoch was complete yet"
    return (
        f"stopped by {name} during the evaluation: {out / 'checkpoint.pth'} holds epoch "
        f"{done} complete; finish the run (its evaluation and outputs) with: "
        f"reid-dhm train --resume {out}"
    )


__all__ = [
    "CHECKPOINT_NAMES",
    "EVAL_DIR",
    "RUN_MARKERS",
    "default_output_dir",
    "evaluation_stopped_line",
    "final_evaluation_done",
    "find_resume_checkpoint",
    "interrupted_line",
    "keep_earlier_run",
    "lock_path",
    "needs_final_evaluation",
    "remove_stale_temporaries",
    "run_folder_lock",
    "set_aside_earlier_run",
    "write_config",
]
