"""A training (or evaluation-only) run as a library call: ``train(cfg) -> RunResult``.

It takes a resolved config (``reid_dhm.config.resolve_config``) and does everything
``reid-dhm train`` does: the task's data (``reid_dhm.runs.tasks``), the model (new, or
the checkpoint's), loss, branch sampling, optimizer and schedule, resume state, the run
folder, the shared training loop with its hooks, the final evaluation, and the outputs:
``checkpoint.pth`` (every epoch), ``deployed.pth`` (main branch only), ``config.yaml``,
``results.json``, ``training_curves.png`` and, for re-ID, ``ranked_results.png`` and the
HTML report. Under ``torchrun`` every process calls it; rank 0 alone prints and writes.

Stops are exceptions the caller turns into one line: ``RunStopped`` (a stop signal, or a
failed final evaluation after training: what was produced is written first) and
``UsageError`` / ``ValueError`` for what a user can fix.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import (
    build_branch_sampler,
    build_criterion,
    build_optimization,
    is_foreign_checkpoint,
    is_main_process,
    model_for_run,
    needs_unused_parameter_search,
    resumable_optimizer_state,
    set_deterministic,
)
from .errors import RunStopped, error_line
from .folders import (
    interrupted_line,
    remove_stale_temporaries,
    run_folder_lock,
    write_config,
)


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder.
        results: what ``results.json`` holds (identity, metrics, epochs).
        history: per-epoch records (loss terms, accuracy, lr, test metrics).
        evaluation: the last evaluation: re-ID ``{data set: ReidEvaluation}``,
            classification ``{branch: {top1_err, top5_err, num_images}}``.
        model: the trained model (bare, on its device).
    """

    output_dir: Path
    results: dict
    history: list = field(default_factory=list)
    evaluation: Any = None
    model: Any = None


def train(
    cfg: Mapping,
    *,
    checkpoint: str | Path | Mapping | None = None,
    eval_only: bool = False,
    should_stop: Callable[[], int | None] | None = None,
) -> RunResult:
    """Train (or, with ``eval_only``, evaluate) with a resolved config.

    Args:
        cfg: the resolved config (``output_dir`` set).
        checkpoint: resume from (or evaluate) this checkpoint: a path or a loaded one.
        eval_only: only evaluate ``checkpoint``'s weights.
        should_stop: polled after every iteration; a signal number stops the run
            (``RunStopped`` saying how to resume). A ``StopSignals`` fits, and also
            stops an evaluation at once (its ``at_once()``).

    The main process holds the run folder's lock throughout (``run_folder_lock``): a
    second run into the same folder fails at once naming this one's PID.
    """
    from ..engines import distributed as dist

    ckpt = _load(checkpoint)
    check_before_training(cfg, ckpt, eval_only)
    main = is_main_process()
    with run_folder_lock(cfg["output_dir"]) if main else contextlib.nullcontext():
        info = dist.init_distributed(cfg["train"]["device"])
        try:
            result = run_in_process(cfg, info, ckpt, eval_only, should_stop)
        except BaseException:
            dist.cleanup(barrier=False)  # the other ranks may be stuck in a collective
            raise
        dist.cleanup()
    return result


def _load(checkpoint) -> Mapping | None:
    if checkpoint is None or isinstance(checkpoint, Mapping):
        return checkpoint
    from ..utils.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def check_before_training(cfg: Mapping, ckpt: Mapping | None, eval_only: bool) -> None:
    """The schedule fits the epochs; a frozen random backbone is worth a warning."""
    if eval_only:
        return
    from ..engines.optim import check_schedule

    check_schedule(max_epoch=cfg["train"]["max_epoch"], **cfg["scheduler"])
    done = int(ckpt.get("epoch") or 0) if ckpt is not None else 0
    fixbase = cfg["train"]["fixbase_epoch"]
    if not cfg["model"]["pretrained"] and fixbase > done and is_main_process():
        print(
            f"warning: train.fixbase_epoch={fixbase} freezes the backbone for the first "
            f"{fixbase} epochs, but the model starts from random weights "
            "(model.pretrained=false / --no-pretrained), so those epochs train only the new "
            "layers on random features; add train.fixbase_epoch=0 to train the whole model "
            "from the start",
            file=sys.stderr,
        )


def run_in_process(cfg, info, ckpt, eval_only: bool, should_stop=None) -> RunResult:
    """One run in this (already initialised) process; see :func:`train`."""
    from ..utils.device import seed_everything
    from .tasks import build_task

    out = Path(cfg["output_dir"])
    # Rank offset: ranks draw different augmentations; DDP copies rank 0's initial weights.
    seed_everything(cfg["train"]["seed"] + (info.rank if cfg["task"] != "reid" else 0))
    if cfg["train"]["deterministic"]:
        set_deterministic()
    if info.is_main:
        print(f"=> output folder {out}", flush=True)  # first: where to look, while it runs
        for stale in remove_stale_temporaries(out):
            print(f"=> removed {stale}, left by an interrupted write")
    setup = build_task(cfg, info)
    model, model_name = model_for_run(cfg, ckpt, setup.num_classes, setup.what)
    setup.adapt_model(model)
    model = model.to(info.device)
    if not eval_only:  # channels_last on CUDA, train.compile
        from ..engines.accel import prepare_model

        prepare_model(model, info.device, cfg["train"]["compile"])
    parts = _training_parts(cfg, model, ckpt, eval_only, info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out, evaluated=ckpt.get("path") if eval_only else None)
        # The epoch lines give values per branch in this order (main/aux1/aux2).
        print(
            f"=> {setup.describe_data()}\n=> {model_name} (branches "
            f"{'/'.join(model.branch_names)}), loss {parts['criterion'].mode}; "
            f"{info.world_size} process(es) on {info.device}",
            flush=True,
        )
    run = _Run(cfg, out, info, setup, model, model_name, parts, ckpt, eval_only)
    return run.evaluate_only(should_stop) if eval_only else run.train(should_stop)


class _InterruptibleTask:
    """A task whose evaluations a stop signal ends at once (``should_stop.at_once()``).

    Training stops after the current iteration; an evaluation has no iteration worth
    finishing and writes nothing, so waiting for it (minutes on a large gallery) would
    only delay the stop. Everything else is the task's own.
    """

    def __init__(self, task, should_stop):
        self._task, self._should_stop = task, should_stop

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._task, name)

    def evaluate(self, model):
        with stop_at_once(self._should_stop):
            return self._task.evaluate(model)


def stop_at_once(should_stop):
    """``should_stop.at_once()`` when it has one (a ``StopSignals``), else nothing."""
    at_once = getattr(should_stop, "at_once", None)
    return at_once() if at_once is not None else contextlib.nullcontext()


def _training_parts(cfg, model, ckpt, eval_only: bool, info) -> dict:
    """Criterion, branch sampler, optimizer, schedule, DDP wrapper and resume state."""
    from ..engines import distributed as dist
    from ..utils.rng import restore_rng_state

    criterion = build_criterion(cfg)
    start = int(ckpt.get("epoch") or 0) if ckpt is not None and not eval_only else 0
    foreign = ckpt is not None and is_foreign_checkpoint(ckpt)
    optimizer, scheduler = build_optimization(cfg, model, start, foreign)
    unused = needs_unused_parameter_search(cfg, criterion, model.branch_names, start)
    wrapped = dist.wrap_model(model, find_unused_parameters=unused, sync_bn=cfg["train"]["sync_bn"])
    parts = dict(
        criterion=criterion, sampler=build_branch_sampler(cfg, model.branch_names),
        optimizer=optimizer, scheduler=scheduler, wrapped=wrapped, start=start, state={},
    )  # fmt: skip
    if start and not foreign:
        say = print if info.is_main else len
        parts["state"] = {**ckpt, "optimizer": resumable_optimizer_state(cfg, ckpt, say=say)}
        # The random state the uninterrupted run had here (data order and augmentation
        # are seeded per epoch anyway; this covers everything else).
        restore_rng_state(ckpt.get("rng"))
    if start and info.is_main:
        print(f"=> resuming {ckpt.get('path')} after epoch {start}")
        if foreign:  # another tool's optimizer and scheduler state do not fit ours
            print(
                "=> not a reid_dhm checkpoint: only its weights are used; the optimizer "
                f"starts afresh, the lr schedule at epoch {start + 1}"
            )
    return parts


class _Run:
    """The trainer of one run and what is written around it."""

    def __init__(self, cfg, out, info, setup, model, model_name, parts, ckpt, eval_only):
        self.cfg, self.out, self.info, self.setup = cfg, out, info, setup
        self.model, self.model_name, self.parts = model, model_name, parts
        self.ckpt, self.eval_only = ckpt, eval_only

    def _trainer(self, should_stop):
        from ..engines.guards import NonFiniteGuard
        from ..engines.hooks import standard_hooks
        from ..engines.optim import set_base_lr
        from ..engines.trainer import Trainer

        cfg, p, train = self.cfg, self.parts, self.cfg["train"]
        hooks = standard_hooks(
            save_dir=self.out, model_name=self.model_name, config=cfg, is_main=self.info.is_main,
            fixbase_epoch=train["fixbase_epoch"], print_freq=train["print_freq"],
            grad_monitor_every=train["grad_monitor_every"], should_stop=should_stop,
            describe=self.setup.describe, digits=self.setup.digits,
        )  # fmt: skip
        task = self.setup.task
        if should_stop is not None:
            task = _InterruptibleTask(task, should_stop)
        trainer = Trainer(
            task, p["wrapped"], p["criterion"], p["optimizer"], p["scheduler"],
            max_epoch=train["max_epoch"], branch_sampler=p["sampler"], amp=train["amp"],
            eval_freq=train["eval_freq"], hooks=hooks,
            guard=NonFiniteGuard(train["nonfinite"], train["nonfinite_max_skips"]),
            history=p["state"].get("history") or [],
        )  # fmt: skip
        if p["state"]:
            trainer.load_state_dict(p["state"])
            # An lr given on the command line when resuming wins over the stored one.
            set_base_lr(p["optimizer"], p["scheduler"], cfg["optim"]["lr"])
            self.setup.restore(p["state"])
        return trainer

    def train(self, should_stop) -> RunResult:
        from ..engines.guards import EvaluationFailed, TrainingInterrupted

        trainer = self._trainer(should_stop)
        failed = None
        try:
            trainer.train(self.parts["start"])
        except TrainingInterrupted as stop:
            raise RunStopped(
                interrupted_line(stop, self.out, _saved_epoch(trainer, self.parts["start"])),
                128 + stop.signum,
                signum=stop.signum,
            ) from None
        except EvaluationFailed as err:
            failed = err  # write what is known first, then say how to finish the job
        results = self._identity()
        results.update(self.setup.results(trainer))
        _add_monitor(results, trainer.history)
        if failed is not None:
            results.update(epochs=failed.epochs, evaluation_error=error_line(failed.cause))
        if self.info.is_main:
            self._write_outputs(results, trainer.history, trainer.last_result)
            self.setup.finished(trainer)
        if failed is not None:
            raise RunStopped(_failed_line(self.out / "checkpoint.pth", failed), 1)
        return RunResult(self.out, results, trainer.history, trainer.last_result, self.model)

    def evaluate_only(self, should_stop=None) -> RunResult:
        """Evaluate the checkpoint's weights into ``eval/`` (nothing is trained)."""
        from ..engines.guards import TrainingInterrupted

        if self.ckpt is not None:
            self.setup.restore(self.ckpt)
        try:
            with stop_at_once(should_stop):
                evaluation = self.setup.task.evaluate(self.parts["wrapped"])
        except TrainingInterrupted as stop:
            raise RunStopped(
                _eval_stopped_line(stop, self.ckpt), 128 + stop.signum, signum=stop.signum
            ) from None
        results = self._identity()
        results.update(
            checkpoint=str(self.ckpt.get("path")), checkpoint_epochs=self.ckpt.get("epoch")
        )
        results.update(self.setup.evaluation_results(evaluation))
        if self.info.is_main:
            text = self.setup.describe_final(evaluation)
            if text:
                print(text, flush=True)
            self._write_outputs(results, [], evaluation, deployed=False)
        return RunResult(self.out, results, [], evaluation, self.model)

    def _identity(self) -> dict:
        cfg = self.cfg
        return {
            "dataset": cfg["data"]["dataset"],
            "model": self.model_name,
            "mode": cfg["loss"]["mode"],
            "seed": cfg["train"]["seed"],
        }

    def _write_outputs(self, results: dict, history, evaluation, deployed: bool = True) -> None:
        import torch

        from ..utils.io import atomic_write, atomic_write_text
        from ..viz.curves import plot_training_curves

        if deployed:
            state = self.model.deployed_file()  # a state dict, or a record holding one
            atomic_write(self.out / "deployed.pth", lambda tmp: torch.save(state, tmp))
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=1))
        if history:
            plot_training_curves(history, self.out / "training_curves.png")
        if evaluation is not None:
            self.setup.render(evaluation, self.out, self.model_name)


def _add_monitor(results: dict, history) -> None:
    from ..engines.grad_monitor import monitor_history

    monitored = monitor_history(history)
    if monitored:
        results["grad_monitor"] = monitored


def _saved_epoch(trainer, start: int) -> int:
    """The epoch ``checkpoint.pth`` holds: the last one the checkpoint hook wrote (an
    epoch evaluated mid-run is written after its evaluation), else the resumed one."""
    from ..engines.hooks import CheckpointHook

    written = [h.written_epoch for h in trainer.hooks if isinstance(h, CheckpointHook)]
    return next((w for w in written if w is not None), start)


def _eval_stopped_line(stop, ckpt) -> str:
    """The one line a stop signal ends an evaluation-only run with."""
    import signal

    name = signal.Signals(stop.signum).name
    what = ckpt.get("path") if ckpt is not None else "the checkpoint"
    return (
        f"stopped by {name} during the evaluation of {what}: nothing was written; run the "
        "same command again to evaluate it"
    )


def _failed_line(ckpt_path: Path, failed) -> str:
    return (
        f"error: training finished ({failed.epochs} epochs, {ckpt_path}; deployed.pth and "
        f"results.json written) but the final evaluation failed: {error_line(failed.cause)}"
        f". Once that is fixed, finish with: reid-dhm train --eval-only --resume {ckpt_path}"
    )


__all__ = ["RunResult", "check_before_training", "run_in_process", "train"]
