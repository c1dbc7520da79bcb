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
import sys
import time
from pathlib import Path

from ..config import DEFAULTS, PRESETS, config_changes, resolve_config
from ..runs.build import is_main_process
from ..runs.folders import (
    EVAL_DIR,
    default_output_dir,
    find_resume_checkpoint,
    keep_earlier_run,
    needs_final_evaluation,
    run_folder_lock,
)
from .common import UsageError, doc_parser, fail, newest_checkpoint, run_guarded


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = doc_parser(__doc__, prog)
    p.add_argument(
        "--dataset",
        help=f"one of {sorted(PRESETS)}; its preset recipe is the base (default: the "
        "--config's or --resume checkpoint's data.dataset)",
    )
    p.add_argument("--config", help="YAML file with any config sections")
    p.add_argument(
        "--root",
        help=f"data root; with --dataset folder, the Market-layout folder itself (default: "
        f"the config's data.root, {DEFAULTS['data']['root']})",
    )
    p.add_argument(
        "--output-dir",
        help="where checkpoints, logs and plots go (default: log/<dataset>/<model>-<mode>; "
        "resuming: the checkpoint's folder)",
    )
    p.add_argument(
        "--resume",
        help="checkpoint to continue from (or to evaluate); a run folder (its newest valid "
        "checkpoint); or 'auto': the newest valid checkpoint in this run's output folder, "
        "if any (else a new run starts)",
    )
    p.add_argument("--eval-only", action="store_true", help="only evaluate --resume")
    p.add_argument(
        "--model",
        help="model registry name, same as model.name=NAME (default: the preset's or "
        "--config's model.name)",
    )
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


def resolve(args, ckpt=None, eval_only: bool = False) -> dict:
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
        training=not eval_only,
    )
    if args.output_dir is not None:
        cfg["output_dir"] = args.output_dir
    if cfg["output_dir"] is None:
        # Resuming continues the run that wrote the checkpoint, wherever it now lies.
        where = Path(args.resume).parent if args.resume else default_output_dir(cfg)
        cfg["output_dir"] = str(where)
    if eval_only:
        cfg["output_dir"] = str(Path(cfg["output_dir"]) / EVAL_DIR)
    return cfg


def find_resume(args) -> str | None:
    """``--resume`` as a checkpoint path: ``auto`` / ``RUN_DIR`` -> the newest valid one.

    ``auto`` looks in the folder this command would write to (``--output-dir``, else
    ``log/<dataset>/<model>-<mode>``) and starts a new run when it holds none, so a
    pre-empted job can be resubmitted with the same command line.
    """
    if not args.resume or (args.resume != "auto" and not Path(args.resume).is_dir()):
        return args.resume
    say = print if is_main_process() else (lambda *a, **k: None)
    if args.resume != "auto":
        found = newest_checkpoint(Path(args.resume), "--resume", say)
        say(f"=> resuming from {found}")
        return str(found)
    folder = Path(resolve(argparse.Namespace(**{**vars(args), "resume": None}))["output_dir"])
    found = find_resume_checkpoint(folder, warn=lambda m: say(m, file=sys.stderr))
    if found is not None:
        say(f"=> resuming from {found}")
        return str(found)
    if args.eval_only:
        raise UsageError(f"--resume auto --eval-only: no readable checkpoint in {folder}")
    say(f"=> --resume auto: no checkpoint in {folder}; starting a new run")
    return None


def refuse_deployed(ckpt, cfg) -> None:
    """A deployed file (main-branch weights only) given to ``--resume``: one line now,
    before the data loads, instead of a failed weight load after it."""
    from ..config.rules import meta_model
    from ..models.checkpoint import refuse_main_branch_only
    from ..runs.build import is_foreign_checkpoint

    if is_foreign_checkpoint(ckpt):  # a reid_dhm checkpoint names its model: never one
        model = meta_model(cfg)
        refuse_main_branch_only(model, ckpt["state_dict"], ckpt["path"], cfg["model"]["name"])


def prepare(args):
    """Read --resume, resolve the config and decide whether the run trains.

    Returns:
        (config, checkpoint or None, eval_only). A checkpoint that has already trained
        ``train.max_epoch`` epochs has nothing to train: the run evaluates it, in
        ``eval/``, and leaves the checkpoint as it is.
    """
    from ..utils.checkpoint import load_checkpoint

    args.resume = find_resume(args)
    ckpt = load_checkpoint(args.resume) if args.resume else None
    eval_only = args.eval_only
    cfg = resolve(args, ckpt, eval_only)
    if ckpt is not None:
        refuse_deployed(ckpt, cfg)
    say = print if is_main_process() else (lambda *a, **k: None)
    done = int(ckpt.get("epoch") or 0) if ckpt is not None else 0
    if ckpt is not None and not eval_only and done >= cfg["train"]["max_epoch"]:
        if needs_final_evaluation(ckpt):  # e.g. killed during its final evaluation
            say(
                f"=> {args.resume} has trained all {done} epochs but its final evaluation "
                f"never completed: evaluating it to finish the run in {cfg['output_dir']}"
            )
            return cfg, ckpt, eval_only
        say(
            f"=> {args.resume} has already trained {done} epochs "
            f"(train.max_epoch={cfg['train']['max_epoch']}): evaluating it only; raise "
            "train.max_epoch to train on"
        )
        eval_only = True
        cfg = resolve(args, ckpt, eval_only)
    if ckpt is not None and ckpt.get("config") is not None:
        stored = resolve_config(resumed=ckpt["config"], resumed_from=args.resume, training=False)
        changes = config_changes(stored, cfg)
        say(
            "=> the checkpoint's config, changed by the command line: " + "; ".join(changes)
            if changes
            else "=> the checkpoint's config, unchanged"
        )
    return cfg, ckpt, eval_only


def main(argv=None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    # Intermixed: KEY=VALUE overrides may come before, between or after the options.
    args = parser.parse_intermixed_args(argv)
    if args.eval_only and not args.resume:
        return fail("--eval-only needs --resume CHECKPOINT")
    if args.seeds is not None and (args.resume or args.eval_only):
        return fail("--seeds starts fresh runs; drop --resume/--eval-only")
    return run_guarded(_main, args)


def _main(args) -> None:
    from ..runs.seeds import train_seeds
    from ..runs.signals import StopSignals
    from ..runs.training import train

    start = time.time()
    cfg, ckpt, eval_only = prepare(args)
    if args.seeds is not None and cfg["task"] == "reid":
        raise UsageError("--seeds is available for classification datasets only")
    main = is_main_process()
    # The lock first: a second run into this folder must not move the first one's aside.
    with run_folder_lock(cfg["output_dir"]) if main else contextlib.nullcontext():
        if main:
            keep_earlier_run(Path(cfg["output_dir"]), args.resume, eval_only)
        with StopSignals() as stops:
            if args.seeds is not None:
                train_seeds(cfg, args.seeds)
            else:
                train(cfg, checkpoint=ckpt, eval_only=eval_only, should_stop=stops)
    if is_main_process():
        print(f"done in {time.time() - start:.0f} s; outputs in {cfg['output_dir']}")
