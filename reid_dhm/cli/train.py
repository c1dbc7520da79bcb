"""Train (or evaluate) a DHM model.

    python tools/train.py --dataset synthreid                     # quickstart, CPU, minutes
    python tools/train.py --dataset market1501 --root reid-data   # the paper's R50 recipe
    python tools/train.py --config configs/market1501/r50_dsl.yaml optim.lr=0.001
    python tools/train.py --dataset market1501 --resume log/.../checkpoint.pth
    python tools/train.py --dataset market1501 --eval-only --resume log/.../checkpoint.pth
    python tools/train.py --dataset cifar100 --root data --model dhm_cifar_resnet110 --seeds 5
    torchrun --nproc_per_node 2 tools/train.py --dataset cifar100 --root data

Resolution order: defaults < dataset preset < --config < KEY=VALUE overrides
(dotted keys; unknown keys are errors). With --resume the checkpoint's own config
replaces defaults and preset: the run continues with the recipe it was trained
with, and --config / KEY=VALUE change it on top (the changes are printed). The
resolved config is written beside the checkpoint as config.yaml.

Outputs go to --output-dir; without it, to the checkpoint's folder when resuming,
else log/<dataset>/<model>-<mode>. --eval-only (and a resumed checkpoint that has
already trained train.max_epoch epochs) writes into an eval/ folder inside that
folder, so the training run's files are never touched. A new training run into a
folder that holds an earlier run first renames that run to <folder>.<time>.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from ..config import PRESETS, config_changes, resolve_config
from .common import (
    CHECKPOINT_NAMES,
    RunStopped,
    StopSignals,
    UsageError,
    announce_resume,
    build_branch_sampler,
    build_criterion,
    default_output_dir,
    error_line,
    fail,
    find_resume_checkpoint,
    interrupted_line,
    is_foreign_checkpoint,
    is_main_process,
    model_for_run,
    needs_unused_parameter_search,
    reid_data_kwargs,
    remove_stale_temporaries,
    resumable_optimizer_state,
    run_guarded,
    set_aside_earlier_run,
    set_deterministic,
    write_config,
)

EVAL_DIR = "eval"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--dataset", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--config", help="YAML file with any config sections")
    p.add_argument("--root", help="data root (folder: the Market-layout folder itself)")
    p.add_argument("--output-dir", help="where checkpoints, logs and plots go")
    p.add_argument(
        "--resume",
        help="checkpoint to continue from (or to evaluate); a run folder (its newest valid "
        "checkpoint); or 'auto': the newest valid checkpoint in this run's output folder, "
        "if any (else a new run starts)",
    )
    p.add_argument("--eval-only", action="store_true", help="only evaluate --resume")
    p.add_argument("--model", help="model registry name (same as model.name=NAME)")
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="classification: N runs with seeds train.seed+i in OUTPUT_DIR/seed<i>, mean +- std",
    )
    p.add_argument(
        "--no-pretrained", action="store_true", help="train from scratch, no ImageNet weights"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=0.001")
    return p


def resolve(args, ckpt=None) -> dict:
    """The run's config: ``ckpt``'s own config (when resuming) or the defaults and
    preset, then --config and the overrides; ``output_dir`` filled in."""
    overrides = list(args.overrides)
    if args.model is not None:  # first, so an explicit model.name=... override still wins
        overrides.insert(0, f"model.name={args.model}")
    if args.root is not None:
        overrides.append(f"data.root={args.root}")
    if args.no_pretrained:
        overrides.append("model.pretrained=false")
    cfg = resolve_config(
        args.dataset,
        args.config,
        overrides,
        resumed=ckpt.get("config") if ckpt is not None else None,
        resumed_from=str(args.resume),
        training=not args.eval_only,
    )
    if args.output_dir is not None:
        cfg["output_dir"] = args.output_dir
    if cfg["output_dir"] is None:
        # Resuming continues the run that wrote the checkpoint, wherever it now lies.
        where = Path(args.resume).parent if args.resume else default_output_dir(cfg)
        cfg["output_dir"] = str(where)
    if args.eval_only:
        cfg["output_dir"] = str(Path(cfg["output_dir"]) / EVAL_DIR)
    return cfg


def find_resume(args) -> None:
    """``--resume auto`` / ``--resume RUN_DIR`` -> the newest valid checkpoint there.

    ``auto`` looks in the folder this command would write to (``--output-dir``, else
    ``log/<dataset>/<model>-<mode>``) and starts a new run when it holds none, so a
    pre-empted job can be resubmitted with the same command line.
    """
    if not args.resume:
        return
    say = print if is_main_process() else (lambda *a, **k: None)
    auto = args.resume == "auto"
    if not auto and not Path(args.resume).is_dir():
        return
    if auto:
        args.resume, eval_only = None, args.eval_only
        args.eval_only = False
        folder = Path(resolve(args)["output_dir"])
        args.eval_only = eval_only
    else:
        folder = Path(args.resume)
    found = find_resume_checkpoint(folder, warn=lambda m: say(m, file=sys.stderr))
    if found is not None:
        say(f"=> resuming from {found}")
        args.resume = str(found)
    elif auto:
        if args.eval_only:
            raise UsageError(f"--resume auto --eval-only: no readable checkpoint in {folder}")
        say(f"=> --resume auto: no checkpoint in {folder}; starting a new run")
        args.resume = None
    else:
        raise UsageError(
            f"--resume {folder}: that folder holds no readable checkpoint "
            f"({' / '.join(CHECKPOINT_NAMES)})"
        )


def prepare(args):
    """Read --resume, resolve the config and decide whether the run trains.

    Returns:
        (config, checkpoint or None). ``args.eval_only`` is set when the checkpoint
        has already trained ``train.max_epoch`` epochs: there is nothing to train, so
        the run evaluates it, in ``eval/``, and leaves the checkpoint as it is.
    """
    from ..engines.optim import check_schedule
    from ..utils.checkpoint import load_checkpoint

    find_resume(args)
    ckpt = load_checkpoint(args.resume) if args.resume else None
    cfg = resolve(args, ckpt)
    say = print if is_main_process() else (lambda *a, **k: None)
    done = int(ckpt.get("epoch") or 0) if ckpt is not None else 0
    if ckpt is not None and not args.eval_only and done >= cfg["train"]["max_epoch"]:
        say(
            f"=> {args.resume} has already trained {done} epochs "
            f"(train.max_epoch={cfg['train']['max_epoch']}): evaluating it only; raise "
            "train.max_epoch to train on"
        )
        args.eval_only = True
        cfg = resolve(args, ckpt)
    if ckpt is not None and ckpt.get("config") is not None:
        stored = resolve_config(resumed=ckpt["config"], resumed_from=args.resume, training=False)
        changes = config_changes(stored, cfg)
        say(
            "=> the checkpoint's config, changed by the command line: " + "; ".join(changes)
            if changes
            else "=> the checkpoint's config, unchanged"
        )
    if not args.eval_only:
        check_schedule(max_epoch=cfg["train"]["max_epoch"], **cfg["scheduler"])
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
    return cfg, ckpt


def run_reid(cfg: dict, args, ckpt=None) -> dict:
    """One re-ID training (or evaluation) run, in this process or as one torchrun rank."""
    from ..engines import distributed as dist

    info = dist.init_distributed(cfg["train"]["device"])
    try:
        results = _run_reid(cfg, args, ckpt, info)
    except BaseException:
        dist.cleanup(barrier=False)  # the other ranks may be stuck in a collective
        raise
    dist.cleanup()
    return results


def _run_reid(cfg: dict, args, ckpt, info) -> dict:
    import torch

    from ..data.preprocessing import Preprocessing
    from ..data.reid_manager import build_reid_datamanager, prepare_reid_dataset
    from ..engines import distributed as dist
    from ..engines.grad_monitor import monitor_history
    from ..engines.guards import EvaluationFailed, TrainingInterrupted
    from ..engines.optim import build_optimizer, build_scheduler, set_base_lr
    from ..engines.reid_engine import DHMReIDEngine
    from ..engines.reid_loaders import reid_train_loader
    from ..utils.device import seed_everything
    from ..utils.io import atomic_write, atomic_write_text
    from ..utils.rng import restore_rng_state

    out = Path(cfg["output_dir"])
    train, test, data = cfg["train"], cfg["test"], cfg["data"]
    seed_everything(train["seed"])
    if train["deterministic"]:
        set_deterministic()
    kwargs = reid_data_kwargs(cfg)
    kwargs["pin_memory"] = info.device.type == "cuda"
    if info.is_main:
        for stale in remove_stale_temporaries(out):
            print(f"=> removed {stale}, left by an interrupted write")
    if info.distributed:
        if info.is_main:  # synthreid is drawn once, by rank 0, before anyone reads it
            prepare_reid_dataset(data["dataset"], data["root"])
        dist.barrier()
    # torchreid prints data set summaries; only rank 0 speaks.
    with contextlib.redirect_stdout(sys.stdout if info.is_main else io.StringIO()):
        manager = build_reid_datamanager(**kwargs)
    train_sampler = reid_train_loader(
        manager, data["batch_size"], data["sampler"], data["num_instances"], train["seed"]
    )

    model, model_name = model_for_run(cfg, args.resume, ckpt, manager.num_train_pids, "identities")
    if model.bnneck is not None:  # test.feature may differ from the checkpoint's choice
        model.set_eval_feature(cfg["test"]["feature"])
    model = model.to(info.device)
    criterion = build_criterion(cfg)
    sampler = build_branch_sampler(cfg, model.branch_names)
    optimizer = build_optimizer(model, **cfg["optim"])
    start_epoch, history = 0, []
    if ckpt is not None and not args.eval_only:
        start_epoch = int(ckpt.get("epoch") or 0)
    foreign = ckpt is not None and is_foreign_checkpoint(ckpt)
    scheduler = build_scheduler(
        optimizer,
        max_epoch=train["max_epoch"],
        start_epoch=start_epoch if foreign else 0,
        **cfg["scheduler"],
    )
    if start_epoch:
        if not foreign:
            state = resumable_optimizer_state(cfg, ckpt, say=print if info.is_main else len)
            if state:
                optimizer.load_state_dict(state)
            if ckpt.get("scheduler"):
                scheduler.load_state_dict(ckpt["scheduler"])
            set_base_lr(optimizer, scheduler, cfg["optim"]["lr"])
            history = list(ckpt.get("history") or [])
            # The random state the uninterrupted run had here (data order and
            # augmentation are seeded per epoch anyway; this covers everything else).
            restore_rng_state(ckpt.get("rng"))
        if info.is_main:
            announce_resume(args.resume, start_epoch, foreign)
    if info.is_main:
        print(
            f"=> {model_name} (branches {', '.join(model.branch_names)}), loss "
            f"{criterion.mode}; {info.world_size} process(es) on {info.device}",
            flush=True,
        )

    unused = needs_unused_parameter_search(cfg, criterion, model.branch_names, start_epoch)
    wrapped = dist.wrap_model(model, find_unused_parameters=unused)
    engine = DHMReIDEngine(
        manager,
        wrapped,
        optimizer,
        criterion,
        scheduler=scheduler,
        branch_sampler=sampler,
        model_name=model_name,
        config=cfg,
        per_branch=test["per_branch"],
        vis_queries=test["vis_queries"],
        vis_topk=test["vis_topk"],
        history=history,
        is_main_process=info.is_main,
        train_sampler=train_sampler,
        grad_monitor_every=train["grad_monitor_every"],
        report=test["report"],
        nonfinite=train["nonfinite"],
        nonfinite_max_skips=train["nonfinite_max_skips"],
        should_stop=getattr(args, "should_stop", None),
        amp=train["amp"],
        preprocessing=Preprocessing(
            height=data["height"], width=data["width"], mean=data["norm_mean"], std=data["norm_std"]
        ),
    )
    if start_epoch and not foreign and ckpt.get("scaler") and engine.scaler is not None:
        engine.scaler.load_state_dict(ckpt["scaler"])
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out, evaluated=args.resume if args.eval_only else None)
    failed = None
    try:
        engine.run(
            save_dir=str(out),
            max_epoch=train["max_epoch"],
            start_epoch=start_epoch,
            print_freq=train["print_freq"],
            fixbase_epoch=train["fixbase_epoch"],
            open_layers=list(model.new_module_names()),
            eval_freq=train["eval_freq"],
            test_only=args.eval_only,
            dist_metric=test["metric"],
            normalize_feature=test["normalize_feature"],
            ranks=test["ranks"],
            rerank=test["rerank"],
        )
    except TrainingInterrupted as stop:
        done = engine.history[-1]["epoch"] if engine.history else start_epoch
        raise RunStopped(interrupted_line(stop, out, done), 128 + stop.signum) from None
    except EvaluationFailed as err:
        failed = err  # write what is known first, then say how to finish the job
    if info.is_main:
        if not args.eval_only:
            deployed = model.deploy().cpu().state_dict()
            atomic_write(out / "deployed.pth", lambda tmp: torch.save(deployed, tmp))
        results = {"dataset": data["dataset"], "model": model_name}
        if args.eval_only:
            results.update(checkpoint=str(args.resume), checkpoint_epochs=ckpt.get("epoch"))
        results.update(engine.results)
        monitored = monitor_history(engine.history)
        if monitored:
            results["grad_monitor"] = monitored
        if failed is not None:
            results.update(epochs=failed.epochs, evaluation_error=error_line(failed.cause))
        atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    if failed is not None:
        ckpt_path = out / "checkpoint.pth"
        raise RunStopped(
            f"error: training finished ({failed.epochs} epochs, {ckpt_path}; deployed.pth and "
            f"results.json written) but the final evaluation failed: {error_line(failed.cause)}"
            f". Once that is fixed, finish with: reid-dhm train --eval-only --resume {ckpt_path}",
            1,
        )
    return engine.results


def main(argv=None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    # Intermixed: KEY=VALUE overrides may come before, between or after the options.
    args = parser.parse_intermixed_args(argv)
    if args.eval_only and not args.resume:
        return fail("--eval-only needs --resume CHECKPOINT")
    return run_guarded(_main, args)


def keep_earlier_run(cfg: dict, args) -> None:
    """A new training run into a folder that holds another run moves that run aside.

    Resuming in the checkpoint's own folder continues that run, and evaluations write
    into ``eval/``, so neither moves anything.
    """
    out = Path(cfg["output_dir"])
    if args.eval_only or not is_main_process():
        return
    if args.resume and out.resolve() == Path(args.resume).resolve().parent:
        return
    moved = set_aside_earlier_run(out)
    if moved is not None:
        print(f"=> {out} held an earlier run; kept it as {moved}", flush=True)


def _main(args) -> None:
    start = time.time()
    cfg, ckpt = prepare(args)
    if args.seeds is not None and cfg["task"] == "reid":
        raise UsageError("--seeds is available for classification datasets only")
    keep_earlier_run(cfg, args)
    with StopSignals() as stops:
        args.should_stop = stops.pending
        if cfg["task"] == "reid":
            run_reid(cfg, args, ckpt)
        else:
            from .train_classification import run_classification

            run_classification(cfg, args, ckpt)
    if is_main_process():
        print(f"done in {time.time() - start:.0f} s; outputs in {cfg['output_dir']}")
