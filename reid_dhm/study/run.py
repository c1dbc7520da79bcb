"""Run a study: skip what is finished, run the rest on an executor, keep ``study.json``.

``study.json`` in the study's folder is rewritten (atomically) after every finished
trial, so a study stopped at any point, or continued in another session from a
committed ``study.json``, reruns only what is missing: a trial counts as finished when
``study.json`` or its folder's ``trial.json`` has an ``ok`` row for the same config
(``Trial.same_run``). Failed trials are run again; interrupted ones resume from
their checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..config.study import Study, Trial, spec_summary
from ..utils.io import atomic_write_text
from .executors import Plan, run_local, run_ray
from .summary import known_tasks
from .trial import TRIAL_FILE, read_row

STUDY_FILE = "study.json"
FORMAT = 1


def trial_dir(runs_dir: Path, trial: Trial) -> Path:
    return runs_dir / trial.setting / trial.variant / f"seed{trial.seed}"


def read_study(path: Path) -> dict | None:
    """A ``study.json`` as written by :func:`run_study`, or None when absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away to start over") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} has study format {data.get('format')!r}, expected {FORMAT}")
    return data


def _finished(
    rows: Iterable[Mapping], trials: Iterable[Trial], runs_dir: Path, reused: Iterable[Mapping] = ()
) -> dict:
    """key -> ok row, for the trials whose config still matches: this study's own rows
    first, then the rows of the studies it reuses, then the trial folders."""
    by_key = {r["key"]: r for r in rows}
    other = {}
    for row in reused:
        other.setdefault(row["key"], []).append(row)
    done = {}
    for trial in trials:
        candidates = [by_key.get(trial.key), *other.get(trial.key, ())]
        row = next((r for r in candidates if _ok(r, trial)), None)
        row = row or read_row(trial_dir(runs_dir, trial) / TRIAL_FILE)
        if _ok(row, trial):
            done[trial.key] = row
    return done


def _reused_rows(study: Study) -> list[Mapping]:
    rows = []
    for path in study.reuse_paths:
        data = read_study(path)
        if data is None:
            raise ValueError(f"{study.path}: reuse names {path}, which does not exist")
        rows.extend(data["trials"])
    return rows


def _ok(row: Mapping | None, trial: Trial) -> bool:
    return bool(row) and row.get("status") == "ok" and trial.same_run(row.get("config"))


def _jobs(study: Study, trials: Iterable[Trial], runs_dir: Path) -> list[dict]:
    jobs = []
    for trial in trials:
        cfg = json.loads(json.dumps(trial.config))
        cfg["output_dir"] = str(trial_dir(runs_dir, trial).resolve())
        # Workers (Ray's above all) may start in another folder: absolute paths.
        for section, key in (("data", "root"), ("model", "pretrained")):
            value = cfg[section].get(key)
            if isinstance(value, str) and not os.path.isabs(value):
                cfg[section][key] = os.path.abspath(value)
        jobs.append({
            "key": trial.key, "setting": trial.setting, "variant": trial.variant,
            "seed": trial.seed, "task": study.tasks[trial.setting],
            "config": cfg,
        })  # fmt: skip
    return jobs


def write_study(path: Path, study: Study, rows: Mapping[str, Mapping]) -> dict:
    """``study.json``: the study file, the tasks and every known trial's row (the
    trials of this study file first, in its order; rows of trials it no longer asks
    for are kept after them)."""
    order = {t.key: i for i, t in enumerate(study.trials)}
    kept = sorted(rows.values(), key=lambda r: (order.get(r["key"], len(order)), r["key"]))
    data = {
        "format": FORMAT,
        "name": study.name,
        "study_file": str(study.path),
        "spec": spec_summary(study),
        "tasks": known_tasks(study.tasks, kept, list(study.spec.settings)),
        "trials": kept,
    }
    atomic_write_text(path, json.dumps(data, indent=1))
    return data


# The study file's prose: its words, not its design, so a report may take them anew.
PROSE_KEYS = ("description", "conclusion")


def refresh_prose(path: Path, study: Study, data: Mapping) -> dict:
    """``data`` (a ``study.json``) with the study file's description and conclusion as
    they are now, rewritten to ``path`` when they changed (``--report-only``: a
    conclusion is written after the trials ran)."""
    spec = spec_summary(study)
    prose = {k: spec[k] for k in PROSE_KEYS}
    if all(data["spec"].get(k, "") == v for k, v in prose.items()):
        return dict(data)
    data = {**data, "spec": {**data["spec"], **prose}}
    atomic_write_text(path, json.dumps(data, indent=1))
    return data


def eta_seconds(finished: Sequence[Mapping], remaining: Sequence[Trial], concurrency: int):
    """Seconds until the remaining trials end, or None before any trial has trained.

    Each remaining trial costs its ``train.max_epoch`` epochs at the measured rate of
    the closest kind of trial: the wall time of this run's finished trials of the same
    setting and variant (a baseline trains twice as fast as DHM) over the epochs they
    trained (a resumed trial trained only its last ones, so a per-trial mean would take
    its minutes for a whole trial's); else of the same setting; else of the whole study.
    Trials run ``concurrency`` at a time, but no faster than the longest one.

    Args:
        finished: rows of this run (``setting``, ``variant``, ``status``, ``seconds``,
            ``epochs``, ``start_epoch``); failed and interrupted ones say nothing about
            speed.
        remaining: the trials not finished yet (the running ones count whole).
    """
    spent: dict[tuple, list] = {}  # (setting, variant), (setting,) and () -> [s, epochs]
    for row in finished:
        epochs = int(row.get("epochs", 0)) - int(row.get("start_epoch", 0))
        if row.get("status") == "ok" and epochs > 0:
            for key in ((row["setting"], row.get("variant")), (row["setting"],), ()):
                total = spent.setdefault(key, [0.0, 0])
                total[0] += float(row.get("seconds", 0.0))
                total[1] += epochs
    if not spent or not remaining:
        return None
    costs = []
    for trial in remaining:
        keys = ((trial.setting, trial.variant), (trial.setting,), ())
        seconds, epochs = next(spent[k] for k in keys if k in spent)
        costs.append(seconds / epochs * int(trial.config["train"]["max_epoch"]))
    return max(sum(costs) / max(1, concurrency), max(costs))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _describe(row: Mapping) -> str:
    if row["status"] != "ok":
        return f"{row['status'].upper()}: {row.get('error', '')}"
    metrics = ", ".join(f"{k} {v:.1f}" for k, v in row["metrics"].items())
    return f"{metrics}, train acc {row['train_acc']:.1f} %"


def run_study(
    study: Study,
    out: Path,
    runs_dir: Path | None = None,
    executor: str = "local",
    plan: Plan | None = None,
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run every unfinished trial of ``study``; returns the ``study.json`` content.

    Args:
        out: the study's folder (``study.json``; reports are written beside it).
        runs_dir: where the trial folders go (default ``out/runs``).
        executor: ``'local'`` or ``'ray'``; plan: the packing (see ``plan_slots``).
        address: a Ray cluster to join (``--address``).
    """
    from .executors import plan_slots

    runs_dir = Path(runs_dir) if runs_dir is not None else out / "runs"
    plan = plan or plan_slots(os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / STUDY_FILE
    earlier = read_study(path)
    rows = {r["key"]: r for r in (earlier or {}).get("trials", [])}
    done = _finished(rows.values(), study.trials, runs_dir, _reused_rows(study))
    rows.update(done)
    todo = _todo(study, done)
    echo(
        f"study {study.name!r}: {len(study.trials)} trials, {len(done)} finished earlier, "
        f"{len(todo)} to run with --executor {executor}, {plan.concurrency} at a time "
        f"({plan.cpus_per_run} CPU{'s' if plan.cpus_per_run > 1 else ''} each); "
        f"trial folders in {runs_dir}"
    )
    data = write_study(path, study, rows)
    if not todo:
        return data
    jobs = _jobs(study, todo, runs_dir)
    if executor == "ray":
        stream = run_ray(jobs, plan, address, cpus=os.cpu_count(), gpus=_gpu_count(plan))
    else:
        stream = run_local(jobs, plan)
    finished: list[Mapping] = []
    failed = 0
    # closing(): a stop raised while this loop (not the executor) runs must still end the
    # running trials now, not whenever the suspended generator is collected.
    with contextlib.closing(stream):
        for n, row in enumerate(stream, 1):
            if row["status"] != "interrupted":
                rows[row["key"]] = row
            finished.append(row)
            failed += row["status"] != "ok"
            data = write_study(path, study, rows)
            ended = {r["key"] for r in finished}
            eta = eta_seconds(finished, [t for t in todo if t.key not in ended], plan.concurrency)
            echo(
                f"[{n}/{len(todo)}] {row['key']} {row.get('seconds', 0):.0f} s: {_describe(row)}"
                f"  (ETA {_clock(eta)})"
            )
    echo(
        f"study {study.name!r}: {len(todo) - failed} of {len(todo)} trials finished"
        + (f", {failed} failed (see their log.txt; rerun to retry them)" if failed else "")
    )
    return data


def _todo(study: Study, done: Mapping) -> list[Trial]:
    """The unfinished trials, seed-major: a study stopped half-way has whole seeds of
    every variant in every setting."""
    seeds = study.spec.seeds
    return sorted(
        (t for t in study.trials if t.key not in done),
        key=lambda t: seeds.index(t.seed) if t.seed in seeds else t.seed,
    )


def _gpu_count(plan: Plan) -> int:
    return len({s for s in plan.slots if s})


def write_reports(out: Path, data: Mapping) -> tuple[Path, Path]:
    """``study.md`` and ``study.html`` in ``out`` from ``data`` (a ``study.json``)."""
    from ..viz.study import study_html, study_markdown
    from .summary import summarize

    summary = summarize(data)
    markdown = study_markdown(data, summary)
    md, page = out / "study.md", out / "study.html"
    atomic_write_text(md, markdown)
    atomic_write_text(page, study_html(data, summary, markdown))
    return md, page


__all__ = [
    "STUDY_FILE",
    "eta_seconds",
    "read_study",
    "refresh_prose",
    "run_study",
    "trial_dir",
    "write_reports",
    "write_study",
]
