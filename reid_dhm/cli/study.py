"""Run a multi-seed study (settings x variants x seeds) and say which differences are real.

    reid-dhm study configs/studies/dhm_screen.yaml --out studies/dhm_screen
    reid-dhm study STUDY.yaml --executor ray --cpus-per-run 2           # local Ray
    reid-dhm study STUDY.yaml --executor ray --address auto --runs-per-gpu 4   # a cluster
    reid-dhm study STUDY.yaml --settings synthreid-12 --seeds 1 2       # a part of it
    reid-dhm study STUDY.yaml --report-only --markdown docs/DHM_STUDY.md

Every trial is a normal training run in OUT/runs/<setting>/<variant>/seed<N>. Rerunning
skips finished trials (OUT/study.json) and resumes interrupted ones; a failing trial is
recorded with its one-line error and the others go on. Writes OUT/study.json,
OUT/study.md (tables, paired 95 % intervals, verdicts) and OUT/study.html (every seed
as a dot, mean training curves).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..study.executors import EXECUTORS
from .common import UsageError, doc_parser, run_guarded


def build_parser(prog: str | None = None):
    p = doc_parser(__doc__, prog)
    p.add_argument("study", help="a study file (see configs/studies/)")
    p.add_argument("--out", help="the study's folder (default: studies/<study name>)")
    p.add_argument("--runs-dir", help="where trial folders go (default: OUT/runs)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool on this machine; ray: Ray, locally or on a "
                   "cluster (default: %(default)s)")  # fmt: skip
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a "
                   "local Ray instance)")  # fmt: skip
    p.add_argument("--jobs", type=int, help="trials at once (default: CPUs / --cpus-per-run, "
                   "or GPUs x --runs-per-gpu)")  # fmt: skip
    p.add_argument(
        "--cpus-per-run",
        type=int,
        default=1,
        help="CPU cores and torch threads per trial (default: %(default)s)",
    )
    p.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        help="trials sharing one GPU, fractional GPUs on Ray (default: %(default)s)",
    )
    p.add_argument("--gpus", type=int, help="GPUs to use (default: all CUDA devices seen)")
    p.add_argument("--settings", nargs="+", help="run only these settings")
    p.add_argument("--variants", nargs="+", help="run only these variants")
    p.add_argument("--seeds", type=int, nargs="+", help="run only these seeds")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write study.md / study.html from OUT/study.json (the study "
        "file's description and conclusion as they are now)",
    )
    p.add_argument("--markdown", help="also write the tables (study.md) to this file")
    return p


def _gpus(given: int | None) -> int:
    if given is not None:
        if given < 0:
            raise UsageError(f"--gpus must be >= 0, got {given}")
        return given
    import torch

    return torch.cuda.device_count()


def _stopped_line(stop, out: Path) -> str:
    return (
        f"{stop}: the finished trials are in {out / 'study.json'}, the running ones stopped "
        "after their iteration and keep their last complete epoch; run the same command "
        "again to resume the study"
    )


def _study(args) -> int:
    from ..config.study import load_study
    from ..runs.errors import RunStopped
    from ..runs.signals import StopRequested, raise_on_stop_signals
    from ..study import plan_slots, read_study, refresh_prose, run_study, write_reports
    from ..utils.io import atomic_write_text

    study = load_study(args.study, args.settings, args.variants, args.seeds)
    out = Path(args.out or Path("studies") / study.name)
    if args.report_only:
        data = read_study(out / "study.json")
        if data is None:
            raise UsageError(f"{out / 'study.json'} does not exist: run the study first")
        data = refresh_prose(out / "study.json", study, data)
    else:
        try:
            plan = plan_slots(os.cpu_count() or 1, _gpus(args.gpus), args.cpus_per_run,
                              args.runs_per_gpu, args.jobs)  # fmt: skip
        except ValueError as err:
            raise UsageError(str(err)) from None
        try:
            with raise_on_stop_signals():
                data = run_study(study, out, args.runs_dir and Path(args.runs_dir),
                                 args.executor, plan, args.address)  # fmt: skip
        except StopRequested as stop:
            raise RunStopped(_stopped_line(stop, out), 128 + stop.signum, stop.signum) from None
    md, page = write_reports(out, data)
    if args.markdown:
        atomic_write_text(Path(args.markdown), md.read_text())
    print(
        f"=> {out / 'study.json'}, {md}, {page}" + (f", {args.markdown}" if args.markdown else "")
    )
    failed = sum(r["status"] != "ok" for r in data["trials"])
    return 1 if failed and not args.report_only else 0


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    status = []
    code = run_guarded(lambda: status.append(_study(args)))
    return code if code else (status[0] if status else 0)
