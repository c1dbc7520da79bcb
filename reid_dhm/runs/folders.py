"""The run folder: where a run writes, what it finds there, and what it never overwrites."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..utils.checkpoint import load_checkpoint
from ..utils.io import atomic_write_text
from .errors import error_line

CHECKPOINT_NAMES = ("checkpoint.pth", "checkpoint.prev.pth")
# Files that show a folder holds a run (seed<i>/ folders: a --seeds run).
RUN_MARKERS = ("config.yaml", "checkpoint.pth", "seeds.json", "seed0/config.yaml")
EVAL_DIR = "eval"


def default_output_dir(cfg: Mapping) -> Path:
    """``log/<dataset>/<model>-<mode>``."""
    return Path("log") / cfg["data"]["dataset"] / f"{cfg['model']['name']}-{cfg['loss']['mode']}"


def write_config(cfg: Mapping, out_dir: Path, evaluated: str | None = None) -> Path:
    """``out_dir/config.yaml``; an evaluation's names the checkpoint it evaluated."""
    from ..config import dump_config

    path = out_dir / "config.yaml"
    head = f"# evaluation of {evaluated}\n" if evaluated else ""
    atomic_write_text(path, head + dump_config(cfg))
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


def interrupted_line(stop, out: Path, done: int) -> str:
    """The one line a stop signal ends a training run with."""
    name = signal.Signals(stop.signum).name
    where = f"{name} in epoch {stop.epoch} after iteration {stop.iteration}"
    if done <= 0:
        return f"stopped by {where}: no epoch was complete yet, so there is nothing to resume"
    return (
        f"stopped by {where}: {out / 'checkpoint.pth'} holds epoch {done} complete (the "
        f"partial epoch is not kept); resume with: reid-dhm train --resume {out}"
    )


__all__ = [
    "CHECKPOINT_NAMES",
    "EVAL_DIR",
    "RUN_MARKERS",
    "default_output_dir",
    "find_resume_checkpoint",
    "interrupted_line",
    "keep_earlier_run",
    "remove_stale_temporaries",
    "set_aside_earlier_run",
    "write_config",
]
