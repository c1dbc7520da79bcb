"""Shared pieces of the command-line tools: config sections -> explicit library arguments."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ..config import ConfigError, dump_config
from ..utils.io import atomic_write_text


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class RunStopped(Exception):
    """A run that ends early on purpose or after a failure it explains: one line, ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class StopSignals:
    """SIGINT / SIGTERM set a flag that the engines read after every iteration.

    The current iteration finishes, nothing is left half-written, and the command line
    says how to resume. A second signal of the same kind acts at once (SIGINT: a
    KeyboardInterrupt; SIGTERM: exit 128 + 15). Handlers are installed only in the main
    thread and restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # the second one: stop now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"\n{name} received: finishing the current iteration, then stopping "
            f"(send {name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def pending(self) -> int | None:
        return self.signum

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


# What a user can cause: reported as one line, exit status 2 (REID_DHM_DEBUG=1 re-raises).
USER_ERRORS = (UsageError, ConfigError, FileNotFoundError, ValueError, ImportError)


def error_line(err: BaseException) -> str:
    """The one line that says what went wrong.

    An error raised in a DataLoader worker process comes back re-raised by torch as
    ``Caught ValueError in DataLoader worker process 0.`` followed by the worker's
    ``Original Traceback``; the worker's own message (naming, e.g., the unreadable
    image) is the traceback's last line.
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if "Original Traceback" in text:
        last = next((line.strip() for line in reversed(lines) if line.strip()), lines[0])
        name, sep, message = last.partition(": ")
        # "ValueError: cannot read image ...": the exception type adds nothing for a user.
        return message if sep and name.isidentifier() else last
    return lines[0]


def run_guarded(body, *args) -> int:
    """Run a tool's body; a user error becomes ``error: <one line>`` and exit status 2.

    ``RunStopped`` prints its line with its own status (128 + signal for a stop signal);
    a Ctrl-C outside training (loading, evaluation) is one line and status 130 instead
    of a traceback.
    """
    try:
        body(*args)
    except RunStopped as stop:
        print(str(stop), file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail("interrupted (SIGINT); nothing half-written was left behind", 130)
    except USER_ERRORS as err:
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail(error_line(err))
    return 0


def reid_data_kwargs(cfg: dict) -> dict:
    """``data`` section -> ``build_reid_datamanager`` keyword arguments."""
    d = cfg["data"]
    return dict(
        dataset=d["dataset"],
        root=d["root"],
        height=d["height"],
        width=d["width"],
        transforms=d["transforms"],
        norm_mean=d["norm_mean"],
        norm_std=d["norm_std"],
        batch_size=d["batch_size"],
        test_batch_size=d["test_batch_size"],
        workers=d["workers"],
        sampler=d["sampler"],
        num_instances=d["num_instances"],
        combineall=d["combineall"],
        skip_bad_images=d["skip_bad_images"],
    )


def model_kwargs(cfg: dict) -> dict:
    m = cfg["model"]
    kwargs = dict(m["kwargs"])
    if m["branches"] is not None:
        kwargs["branches"] = m["branches"]
    # Only a non-default style is passed: models without the option (CIFAR DenseNet,
    # WRN) keep building from configs that leave it alone.
    if m["branch_style"] != "paper":
        kwargs["branch_style"] = m["branch_style"]
    if m["neck"] != "none":
        kwargs["neck"] = m["neck"]
    if m["last_stride"] != 2:
        kwargs["last_stride"] = m["last_stride"]
    if cfg["test"]["feature"] != "pre_bn":
        kwargs["eval_feature"] = cfg["test"]["feature"]
    return kwargs


def build_model_for(cfg: dict, num_classes: int):
    """``model`` section -> a registry model, with a hint when ImageNet weights are missing."""
    from ..models import build_model

    m = cfg["model"]
    try:
        return build_model(m["name"], num_classes, pretrained=m["pretrained"], **model_kwargs(cfg))
    except FileNotFoundError as err:
        if m["pretrained"] is not True:
            raise
        raise UsageError(
            f"{err}. The recipe starts from ImageNet weights; to train from scratch "
            "instead, pass --no-pretrained (or model.pretrained=false)."
        ) from None
    except TypeError as err:
        raise UsageError(f"model {m['name']!r}: {err}") from None


def is_foreign_checkpoint(ckpt) -> bool:
    """A checkpoint written by another tool (torchreid's, a bare state dict): weights only."""
    return ckpt.get("model_name") is None


def announce_resume(resume: str, start_epoch: int, foreign: bool) -> None:
    print(f"=> resuming {resume} after epoch {start_epoch}")
    if foreign:
        # Another tool's optimizer and scheduler state do not fit ours.
        print(
            "=> not a reid_dhm checkpoint: only its weights are used; the optimizer starts "
            f"afresh, the lr schedule at epoch {start_epoch + 1}"
        )


def resumable_optimizer_state(cfg: dict, ckpt, say=print):
    """The checkpoint's optimizer state, unless the run now uses another optimizer.

    An SGD run cannot take Adam's moments (and would fail with a bare KeyError); the
    optimizer then starts afresh, which is said.
    """
    state = ckpt.get("optimizer")
    old = ((ckpt.get("config") or {}).get("optim") or {}).get("name")
    new = cfg["optim"]["name"]
    if state and old is not None and old != new:
        say(f"=> optim.name changed from {old!r} to {new!r}: the optimizer state starts afresh")
        return None
    return state


def model_for_run(cfg: dict, resume: str | None, ckpt, num_classes: int, what: str):
    """The checkpoint's model when resuming (its class count must fit), else a new one.

    A reid_dhm checkpoint names its model; another tool's (torchreid's
    ``save_checkpoint``, a bare state dict) does not, so the config's ``model``
    section (``--model``) says which model its weights belong to.

    Returns:
        (model, registry name).
    """
    from ..utils.checkpoint import model_from_checkpoint

    if ckpt is None:
        return build_model_for(cfg, num_classes), cfg["model"]["name"]
    name = cfg["model"]["name"]
    if is_foreign_checkpoint(ckpt):
        try:
            model = model_from_checkpoint(
                ckpt, model_name=name, num_classes=num_classes, **model_kwargs(cfg)
            )
        except (ValueError, TypeError) as err:
            raise UsageError(
                f"{resume} is not a reid_dhm checkpoint and does not say which model it holds; "
                f"its weights do not fit model.name={name!r} ({error_line(err)}): pass "
                "--model NAME (and the model.* keys it was built with)"
            ) from None
        return model, name
    if ckpt.get("config") is not None and name != ckpt["model_name"]:
        # The config came from the checkpoint, so only the command line changed the name.
        raise UsageError(
            f"{resume} holds a {ckpt['model_name']!r} model, but model.name is {name!r}: "
            "a resumed or evaluated run keeps the checkpoint's model (drop --model)"
        )
    model = model_from_checkpoint(ckpt)
    if model.num_classes != num_classes:
        raise UsageError(
            f"{resume} was trained on {model.num_classes} {what} but "
            f"{cfg['data']['dataset']} has {num_classes}"
        )
    return model, ckpt["model_name"]


def build_criterion(cfg: dict):
    """``loss`` section -> ``DHMLoss``."""
    from ..losses import DHMLoss

    loss = cfg["loss"]
    return DHMLoss(
        mode=loss["mode"],
        direction=loss["direction"],
        label_smooth=loss["label_smooth"],
        temperature=loss["temperature"],
        ce_weights=loss["ce_weights"],
        kl_weight=loss["kl_weight"],
        kl_warmup_epochs=loss["kl_warmup_epochs"],
        kl_teachers=loss["kl_teachers"],
        triplet_weight=loss["triplet_weight"],
        triplet_margin=loss["triplet_margin"],
        triplet_soft=loss["triplet_soft"],
    )


def build_branch_sampler(cfg: dict, branch_names):
    """``branch_sampling`` section -> ``BranchSampler`` over the model's branches."""
    from ..losses import BranchSampler

    bs = cfg["branch_sampling"]
    return BranchSampler(branch_names, bs["policy"], bs["p"], bs["seed"])


def needs_unused_parameter_search(cfg: dict, criterion, branch_names, start_epoch: int = 0) -> bool:
    """Whether DDP must look for parameters without gradients in an iteration.

    Frozen stages, branches inactive in an epoch and branches without a loss term
    (baseline mode on a DHM model) leave parameters unused; the search costs a graph
    traversal per step, so it is only switched on when one of those can happen.
    """
    has_aux = len(branch_names) > 1
    return (
        cfg["train"]["fixbase_epoch"] > start_epoch
        or (has_aux and cfg["branch_sampling"]["policy"] != "fixed")
        or (has_aux and criterion.mode == "baseline")
    )


def default_output_dir(cfg: dict) -> Path:
    return Path("log") / cfg["data"]["dataset"] / f"{cfg['model']['name']}-{cfg['loss']['mode']}"


def write_config(cfg: dict, out_dir: Path, evaluated: str | None = None) -> Path:
    """``out_dir/config.yaml``; an evaluation's names the checkpoint it evaluated."""
    path = out_dir / "config.yaml"
    head = f"# evaluation of {evaluated}\n" if evaluated else ""
    atomic_write_text(path, head + dump_config(cfg))
    return path


CHECKPOINT_NAMES = ("checkpoint.pth", "checkpoint.prev.pth")


def find_resume_checkpoint(folder: Path, warn=print) -> Path | None:
    """The newest valid checkpoint in a run folder (``checkpoint.pth`` and the previous
    epoch's ``checkpoint.prev.pth``); a damaged one is skipped with a warning.

    Returns:
        Its path, or None when the folder holds no readable checkpoint.
    """
    from ..utils.checkpoint import load_checkpoint

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


def set_deterministic() -> None:
    """Deterministic kernels (train.deterministic): reruns and resumes repeat bit for bit."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it (CUDA)
    torch.use_deterministic_algorithms(True)


# Files that show a folder holds a run (seed<i>/ folders: a --seeds run).
RUN_MARKERS = ("config.yaml", "checkpoint.pth", "seeds.json", "seed0/config.yaml")


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


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


__all__ = [
    "CHECKPOINT_NAMES",
    "ConfigError",
    "RunStopped",
    "StopSignals",
    "find_resume_checkpoint",
    "resumable_optimizer_state",
    "interrupted_line",
    "set_deterministic",
    "remove_stale_temporaries",
    "UsageError",
    "announce_resume",
    "build_branch_sampler",
    "build_criterion",
    "build_model_for",
    "default_output_dir",
    "error_line",
    "fail",
    "is_foreign_checkpoint",
    "is_main_process",
    "model_for_run",
    "model_kwargs",
    "needs_unused_parameter_search",
    "reid_data_kwargs",
    "run_guarded",
    "set_aside_earlier_run",
    "write_config",
]
