"""reid-dhm study: study files, statistics, packing, executors, resuming, reports."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_system

from reid_dhm.cli import study as study_cli
from reid_dhm.config import ConfigError
from reid_dhm.config.study import load_study
from reid_dhm.study import decide, describe, paired, plan_slots, verdict
from reid_dhm.study.summary import known_tasks, summarize
from reid_dhm.viz.study import study_markdown

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
STUDIES = ROOT / "docs" / "studies"


# ------------------------------------------------------------------------ statistics
def test_paired_interval_against_a_hand_computed_case():
    # differences 1, 2, 3: mean 2, std 1, t(0.975, 2) = 4.302653 -> half 2.484138
    d = paired({1: 10.0, 2: 12.0, 3: 14.0, 4: 99.0}, {1: 9.0, 2: 10.0, 3: 11.0})
    assert d["seeds"] == [1, 2, 3] and d["n"] == 3
    assert d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert d["low"] == pytest.approx(2 - 2.484138, abs=1e-5)
    assert d["high"] == pytest.approx(2 + 2.484138, abs=1e-5)
    assert verdict(d, "mAP") == "no difference"
    # differences 3, 4, 5: interval [1.516, 6.484] above 0
    clear = paired({1: 3.0, 2: 4.0, 3: 5.0}, {1: 0.0, 2: 0.0, 3: 0.0})
    assert verdict(clear, "mAP") == "better"
    # for an error a positive difference is worse
    assert verdict(clear, "top1_err") == "worse"
    assert verdict(paired({1: 1.0}, {1: 0.0}), "mAP") == "too few seeds"
    s = describe([1.0, 2.0, 6.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(7.0))
    assert describe([5.0])["std"] == 0.0


def test_the_rule_needs_a_win_somewhere_and_no_loss_beyond_the_margin():
    tasks = {"a": "reid", "b": "classification"}
    seeds = {1: 0.0, 2: 0.0, 3: 0.0}
    table = {
        # a: cand beats both by 3..5 mAP (better)
        "a": {"cand": {1: 3.0, 2: 4.0, 3: 5.0}, "dsl": seeds, "dhm": seeds},
        # b (errors): cand is 0.1..0.3 points worse: lower bound of the gain
        # -0.2 - 0.248 = -0.448 > -0.5: within the margin
        "b": {"cand": {1: 0.1, 2: 0.2, 3: 0.3}, "dsl": seeds, "dhm": seeds},
    }
    margin = {"reid": 1.0, "classification": 0.5}
    out = decide(table, tasks, "cand", ["dsl", "dhm"], margin)
    assert out["passed"] and out["better_somewhere"] and out["within_margin"]
    assert out["settings"]["b"]["dsl"]["verdict"] == "no difference"
    # 0.2..0.4 worse: gain's lower bound -0.548 -> fails
    table["b"]["cand"] = {1: 0.2, 2: 0.3, 3: 0.4}
    out = decide(table, tasks, "cand", ["dsl", "dhm"], margin)
    assert not out["passed"] and out["better_somewhere"] and not out["within_margin"]
    assert any(r.startswith("b: the lower bound") for r in out["reasons"])


def test_the_rule_is_final_once_a_setting_with_every_seed_breaks_the_margin():
    tasks = {"a": "reid", "b": "reid"}
    zeros = {1: 0.0, 2: 0.0, 3: 0.0}
    table = {
        # a: every planned seed, cand 2..4 mAP worse: gain's lower bound far below -1
        "a": {"cand": {1: -2.0, 2: -3.0, 3: -4.0}, "dsl": zeros, "dhm": zeros},
        # b: seed 3 missing, cand far ahead so far
        "b": {"cand": {1: 5.0, 2: 6.0}, "dsl": {1: 0.0, 2: 0.0}, "dhm": {1: 0.0, 2: 0.0}},
    }
    margin = {"reid": 1.0}
    out = decide(table, tasks, "cand", ["dsl", "dhm"], margin, seeds=[1, 2, 3])
    assert not out["passed"] and out["final"]
    assert out["complete"] == ["a"] and out["broken"] == ["a"]
    # the same shortfall in the incomplete setting only: seed 3 of b could still change it
    table["a"]["cand"] = {1: 3.0, 2: 4.0, 3: 5.0}
    table["b"]["cand"] = {1: -2.0, 2: -3.0}
    out = decide(table, tasks, "cand", ["dsl", "dhm"], margin, seeds=[1, 2, 3])
    assert not out["passed"] and not out["final"] and out["broken"] == []
    # every seed everywhere: final whatever the outcome
    for v in ("cand", "dsl", "dhm"):
        table["b"][v] = {**table["b"][v], 3: 0.0}
    assert decide(table, tasks, "cand", ["dsl", "dhm"], margin, seeds=[1, 2, 3])["final"]


def test_eta_counts_epochs_at_the_closest_measured_rate():
    from reid_dhm.config.study import Trial
    from reid_dhm.study.run import eta_seconds

    def trial(setting, epochs, variant="dhm"):
        return Trial(setting, variant, 1, {"train": {"max_epoch": epochs}})

    def row(setting, seconds, epochs, start=0, status="ok", variant="dhm"):
        return {"setting": setting, "variant": variant, "status": status,
                "seconds": seconds, "epochs": epochs, "start_epoch": start}  # fmt: skip

    assert eta_seconds([], [trial("a", 10)], 2) is None  # nothing measured yet
    assert eta_seconds([row("a", 9.0, 0, status="failed")], [trial("a", 10)], 2) is None
    # a/dhm: 100 s for 10 epochs, and a resumed trial's 30 s for its last 3 (of 10):
    # 10 s/epoch; a/baseline: 40 s for 10 epochs = 4 s/epoch; so a: 170 s / 23 epochs;
    # b/dhm: 60 s for 12 epochs = 5 s/epoch. Everything: 230 s / 35 epochs.
    done = [row("a", 100.0, 10), row("a", 30.0, 10, start=7), row("b", 60.0, 12)]
    done.append(row("a", 40.0, 10, variant="baseline"))
    done.append(row("a", 5.0, 0, status="interrupted"))  # says nothing about speed
    left = [trial("a", 10), trial("a", 20, "baseline"), trial("a", 10, "dsl"),
            trial("b", 12), trial("c", 10)]  # fmt: skip
    costs = [10 * 10, 4 * 20, 170 / 23 * 10, 5 * 12, 230 / 35 * 10]
    assert eta_seconds(done, left, 2) == pytest.approx(sum(costs) / 2)
    # never shorter than the longest trial left (one slot idles)
    assert eta_seconds(done, [trial("a", 40), trial("b", 4)], 4) == pytest.approx(400)
    assert eta_seconds(done, [], 2) is None


def test_study_tables_show_the_gradient_monitor_per_variant():
    data = json.loads((STUDIES / "dhm_confirm" / "study.json").read_text())
    data["trials"] = [
        t for t in data["trials"] if t["setting"] == "synthreid-12" and t["seed"] <= 3
    ]
    dsl = [t for t in data["trials"] if t["variant"] == "dsl"]
    for t, cos in zip(dsl, (0.5, 0.7, 0.9)):
        t["monitor"] = {"grad/cos/main~aux1": cos, "grad/cos/aux1~aux2": 0.25}
    summary = summarize(data)
    mon = summary["settings"]["synthreid-12"]["variants"]["dsl"]["monitor"]
    assert mon["main~aux1"]["mean"] == pytest.approx(0.7)
    assert mon["main~aux1"]["std"] == pytest.approx(0.2)
    md = study_markdown(data, summary)
    assert "| variant | main~aux1 | main~aux2 | aux1~aux2 |" in md
    assert "| `dsl` | 0.700 +- 0.200 | - | 0.250 +- 0.000 |" in md
    assert "| `baseline` | " not in md.split("Gradient agreement")[1].split("Variants:")[0]


def test_a_run_of_some_settings_keeps_the_others_in_the_reports(tmp_path):
    """``--settings X`` resolves only X: study.json must still name every setting with
    trials on record, or the reports would drop their tables and the rule their rows."""
    data = json.loads((STUDIES / "dhm_confirm" / "study.json").read_text())
    data["tasks"] = {"fashion-mnist-1k": "classification"}  # what such a run used to write
    summary = summarize(data)
    assert list(summary["settings"])[:2] == ["synthreid-12", "synthreid-40"]
    assert "synthreid-12" in summary["decision"]["settings"]
    assert known_tasks({"b": "reid"}, [{"setting": "a", "task": "reid"}], ["a", "b", "c"]) == {
        "a": "reid",
        "b": "reid",
    }


def test_report_only_takes_the_study_files_prose_as_it_is_now(tmp_path, tiny_reid, tiny_cifar10):
    """A conclusion is written after the trials ran: --report-only prints it after the
    decision and keeps study.json (from which the committed reports are checked) in step."""
    out = tmp_path / "out"
    out.mkdir()
    data = json.loads((STUDIES / "dhm_confirm" / "study.json").read_text())
    (out / "study.json").write_text(json.dumps(data, indent=1))
    path = write_study(tmp_path, tiny_reid, tiny_cifar10)
    text = path.read_text().replace(
        "description: A tiny study of two settings.",
        "description: Now said better.\nconclusion: |\n  ## What it means\n\n  Level.\n",
    )
    path.write_text(text)
    copy = tmp_path / "STUDY.md"
    args = [str(path), "--out", str(out), "--report-only", "--markdown", str(copy)]
    assert study_cli.main(args) == 0
    md = copy.read_text()
    assert md.index("Now said better.") < md.index("## Decision") < md.index("## What it means")
    assert md.rstrip().endswith("Level.")
    stored = json.loads((out / "study.json").read_text())
    assert stored["spec"]["conclusion"] == "## What it means\n\nLevel.\n"
    assert (
        stored["trials"] == data["trials"]
        and stored["spec"]["settings"] == data["spec"]["settings"]
    )
    assert study_markdown(stored, summarize(stored)) == md  # the committed-report check holds


# ------------------------------------------------------------------------- packing
def test_runs_per_gpu_packing_for_a_given_gpu_count():
    plan = plan_slots(cpus=16, gpus=2, cpus_per_run=2, runs_per_gpu=3)
    assert plan.slots == ("cuda:0",) * 3 + ("cuda:1",) * 3
    assert plan.gpus_per_run == pytest.approx(1 / 3) and plan.cpus_per_run == 2
    assert plan_slots(cpus=16, gpus=1, runs_per_gpu=4, jobs=2).slots == ("cuda:0", "cuda:0")
    cpu = plan_slots(cpus=8, cpus_per_run=3)
    assert cpu.concurrency == 2 and cpu.gpus_per_run == 0 and set(cpu.slots) == {None}
    assert plan_slots(cpus=1, cpus_per_run=4).concurrency == 1
    with pytest.raises(ValueError, match="--runs-per-gpu"):
        plan_slots(cpus=2, gpus=1, runs_per_gpu=0)


# ---------------------------------------------------------------------- study files
def write_study(tmp_path, tiny_reid, tiny_cifar10, extra_variants="", extra_setting=""):
    text = f"""
name: tiny
description: A tiny study of two settings.
seeds: [1, 2]
reference: [dsl]
settings:
  reid:
    dataset: folder
    overrides: [data.root={tiny_reid}, model.name=dhm_mobilenetv2, model.pretrained=false,
      data.height=64, data.width=32, data.batch_size=8, data.workers=0, train.max_epoch=1,
      train.fixbase_epoch=0, test.vis_queries=0]
    {extra_setting}
  cls:
    dataset: cifar10
    overrides: [data.root={tiny_cifar10}, model.name=dhm_cifar_resnet20, data.workers=0,
      train.max_epoch=1, data.batch_size=20]
    variants: [dsl, dhm-adaptive]
variants:
  dsl: [loss.mode=dsl]
  dhm-adaptive: [loss.kl_schedule=adaptive]
{extra_variants}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_study_file_errors_name_the_place(tmp_path, tiny_reid, tiny_cifar10):
    path = write_study(tmp_path, tiny_reid, tiny_cifar10, "  bad: [optim.lr=-1]")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert "setting 'reid', variant 'bad'" in str(err.value) and "optim.lr" in str(err.value)
    path = write_study(tmp_path, tiny_reid, tiny_cifar10, "  warm: ['loss.kl_warmup_epochs={w}']")
    with pytest.raises(ConfigError, match="cannot fill 'w'"):
        load_study(path)
    path.write_text(path.read_text().replace("reference: [dsl]", "reference: [nope]"))
    with pytest.raises(ConfigError, match="'nope' .* is not a variant"):
        load_study(path)
    path = write_study(tmp_path, tiny_reid, tiny_cifar10)
    study = load_study(path, settings=["cls"], seeds=[2])
    assert [t.key for t in study.trials] == ["cls/dsl/seed2", "cls/dhm-adaptive/seed2"]
    assert study.trials[1].config["loss"]["kl_schedule"] == "adaptive"
    assert study.trials[1].config["train"]["seed"] == 2
    with pytest.raises(ConfigError, match="has no setting 'x'"):
        load_study(path, settings=["x"])


def test_reuse_takes_matching_rows_from_another_study(tmp_path, tiny_reid, tiny_cifar10):
    """A confirmation study starts from the seeds its screen ran with the same config;
    a row whose config differs (here the lr) is not taken."""
    from reid_dhm.study.run import _finished, run_study
    from reid_dhm.study.run import write_study as write_json

    path = write_study(tmp_path, tiny_reid, tiny_cifar10)
    screen = load_study(path, settings=["cls"])
    rows = {
        t.key: {"key": t.key, "setting": t.setting, "variant": t.variant, "seed": t.seed,
                "status": "ok", "metrics": {"top1_err": 50.0 + t.seed}, "train_acc": 60.0,
                "seconds": 1.0, "config": t.config}
        for t in screen.trials
    }  # fmt: skip
    (tmp_path / "screen").mkdir()
    write_json(tmp_path / "screen" / "study.json", screen, rows)
    path.write_text(path.read_text() + "reuse: [screen/study.json]\n")
    confirm = load_study(path, settings=["cls"])
    lines = []
    data = run_study(confirm, tmp_path / "confirm", echo=lines.append)
    assert "4 finished earlier, 0 to run" in lines[0]
    assert {r["key"]: r["metrics"] for r in data["trials"]} == {
        k: r["metrics"] for k, r in rows.items()
    }
    changed = load_study(path, settings=["cls"], seeds=[1])
    stale = json.loads(json.dumps(rows["cls/dsl/seed1"]))
    stale["config"]["optim"]["lr"] *= 2
    assert _finished([], changed.trials, tmp_path / "runs", [stale]) == {}
    path.write_text(path.read_text().replace("screen/study.json", "nowhere/study.json"))
    with pytest.raises(ValueError, match="reuse names .*nowhere/study.json"):
        run_study(load_study(path), tmp_path / "confirm2", echo=lines.append)


def _sleeps_ignoring_sigterm(pid_file):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the run's data-loader workers do
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(300)


def _trial_leaving_a_loader_worker(job):
    """A trial whose process still has a daemonic child that ignores SIGTERM."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(
        target=_sleeps_ignoring_sigterm, args=(job["pid_file"],), daemon=True
    )
    child.start()
    while not Path(job["pid_file"]).is_file():
        time.sleep(0.05)
    return {"key": job["key"], "status": "ok"}


def _trial_that_dies(job):
    os._exit(3)


def test_local_executor_does_not_wait_for_children_a_trial_leaves_behind(tmp_path):
    from reid_dhm.study.executors import Plan, run_local

    base = {"setting": "s", "variant": "v", "seed": 1, "task": "reid", "config": {}}
    jobs = [{**base, "key": f"t{i}", "pid_file": str(tmp_path / f"{i}.pid")} for i in range(2)]
    # Interpreter shutdown would SIGTERM the child and join it for ever: the study must
    # get both rows while the children are still alive.
    rows = list(run_local(jobs, Plan((None,), 1, 0.0), target=_trial_leaving_a_loader_worker))
    pids = [int((tmp_path / f"{i}.pid").read_text()) for i in range(2)]
    try:
        assert [r["key"] for r in rows] == ["t0", "t1"] and all(r["status"] == "ok" for r in rows)
        for pid in pids:
            os.kill(pid, 0)  # still there: nobody waited for it
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (row,) = run_local(jobs[:1], Plan((None,), 1, 0.0), target=_trial_that_dies)
    assert row["status"] == "failed" and "exit code 3" in row["error"]


def _trial_returning(job):
    return {"key": job["key"], "status": "ok"}


def test_a_trial_whose_study_stopped_listening_exits_quietly(capfd):
    """A study being stopped closes its pipe before the trial returns: no traceback."""
    import multiprocessing

    from reid_dhm.study.executors import _trial_process

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    parent.close()
    proc = ctx.Process(target=_trial_process, args=(child, _trial_returning, {"key": "t"}))
    proc.start()
    child.close()
    proc.join(120)
    assert proc.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


BAR_TRIAL = """
import sys

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

HELD = []


def trial(job):
    for _ in tqdm(range(3), file=sys.stderr):  # a bar, as every training run draws one
        pass
    # Stopped mid-epoch: a loader iterator (a worker, queues with named semaphores) still
    # referenced, from a reference cycle (as a run's engine holds it) or from a global.
    batches = iter(DataLoader(torch.arange(64.0), batch_size=4, num_workers=1))
    next(batches)
    if job["key"] == "t0":
        cycle = [batches]
        cycle.append(cycle)
    else:
        HELD.append(batches)
    return {"key": job["key"], "status": "interrupted"}
"""


def test_local_trials_leave_no_semaphore_for_the_resource_tracker(tmp_path):
    """The tracker reports leaks when the study's interpreter exits: run one in a
    subprocess and read its stderr (tqdm's lock, the loaders' queues of a stopped trial)."""
    (tmp_path / "bar_trial.py").write_text(BAR_TRIAL)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from bar_trial import trial\n"
        "from reid_dhm.study.executors import Plan, run_local\n"
        "jobs = [{'key': f't{i}', 'setting': 's', 'variant': 'v', 'seed': 1, 'task': 'reid',"
        " 'config': {}} for i in range(2)]\n"
        "rows = list(run_local(jobs, Plan((None,), 1, 0.0), target=trial))\n"
        "assert [r['status'] for r in rows] == ['interrupted'] * 2, rows\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # the bars were drawn
    assert "leaked" not in done.stderr, done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "studies").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_shipped_study_file_resolves(path, tmp_path, monkeypatch):
    # weight files a study names (ImageNet MobileNetV2 in weights/, fetched by the user as
    # dhm_screen.yaml says) are not in a clean clone: the config check only asks that the
    # file exists, so an empty stand-in in a scratch working directory lets every trial
    # resolve without the real weights
    monkeypatch.chdir(tmp_path)
    for name in re.findall(r"model\.pretrained=([^\s,\]\"']+)", path.read_text()):
        if name not in ("true", "false", "null"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).touch()
    study = load_study(path)
    assert study.trials and set(study.tasks) == set(study.spec.settings)
    assert len({t.key for t in study.trials}) == len(study.trials)


# ------------------------------------------------------------------- end to end
def _rows(out: Path) -> dict:
    return {r["key"]: r for r in json.loads((out / "study.json").read_text())["trials"]}


@pytest.mark.slow
def test_local_study_end_to_end_resumes_and_records_a_failing_trial(
    tmp_path, tiny_reid, tiny_cifar10, capsys
):
    # a third variant that fails at run time (a data folder that does not exist: the
    # config check cannot know), in reid only
    path = write_study(tmp_path, tiny_reid, tiny_cifar10, "  broken: [data.root=/nonexistent/d]")
    out = tmp_path / "out"
    args = [str(path), "--out", str(out), "--jobs", "2"]
    assert study_cli.main([*args, "--seeds", "1"]) == 1  # the failing trial -> status 1
    rows = _rows(out)
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {
        "reid/dsl/seed1", "reid/dhm-adaptive/seed1", "cls/dsl/seed1", "cls/dhm-adaptive/seed1"
    }  # fmt: skip
    broken = rows["reid/broken/seed1"]
    assert broken["status"] == "failed" and "/nonexistent/d" in broken["error"]
    assert "\n" not in broken["error"]
    ok = rows["reid/dhm-adaptive/seed1"]
    assert 0 <= ok["metrics"]["mAP"] <= 100 and ok["epochs"] == 1
    assert "kl_trust/main" in ok["curves"]  # the adaptive schedule's running accuracy
    assert (out / "runs" / "reid" / "dsl" / "seed1" / "deployed.pth").is_file()
    first = {k: r["seconds"] for k, r in rows.items() if r["status"] == "ok"}
    capsys.readouterr()

    # the whole study now: finished trials are not run again, the failed one is retried
    assert study_cli.main(args) == 1
    printed = capsys.readouterr().out
    assert "4 finished earlier, 6 to run" in printed
    rows = _rows(out)
    assert {k: rows[k]["seconds"] for k in first} == first  # untouched
    assert sum(r["status"] == "ok" for r in rows.values()) == 8

    md = (out / "study.md").read_text()
    assert "| variant | seeds | mAP | Rank-1 | mINP |" in md
    assert "| --- | --- | --- |" in md  # separator rows: the tables render on GitHub
    assert "`dhm-adaptive` | `dsl` | 2 |" in md and "seed 1: " in md  # the failure is listed
    summary = summarize(json.loads((out / "study.json").read_text()))
    assert summary["settings"]["cls"]["variants"]["dsl"]["n"] == 2
    diff = summary["settings"]["reid"]["diffs"]["dhm-adaptive"]["dsl"]["mAP"]
    assert diff["n"] == 2 and diff["verdict"] in ("better", "worse", "no difference")
    assert (out / "study.html").stat().st_size > 10_000

    # report-only writes the tables again from study.json, training nothing
    copy = tmp_path / "STUDY.md"
    assert (
        study_cli.main([str(path), "--out", str(out), "--report-only", "--markdown", str(copy)])
        == 0
    )
    assert copy.read_text() == md


@pytest.mark.slow
def test_a_study_killed_half_way_reruns_only_what_is_missing(tmp_path, tiny_reid, tiny_cifar10):
    path = write_study(tmp_path, tiny_reid, tiny_cifar10)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reid_dhm", "study", str(path), "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "study.json").is_file() and sum(
            r["status"] == "ok" for r in _rows(out).values()
        ) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole study: driver and trial processes
    proc.wait()
    before = {k: r["seconds"] for k, r in _rows(out).items() if r["status"] == "ok"}
    assert 2 <= len(before) < 8
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} finished earlier, {8 - len(before)} to run" in done.stdout
    rows = _rows(out)
    assert all(rows[k]["seconds"] == s for k, s in before.items())
    assert sum(r["status"] == "ok" for r in rows.values()) == 8


def test_a_trial_leaves_second_stop_signals_to_its_study():
    from reid_dhm.runs.signals import StopSignals

    with StopSignals(escalate=False) as stops:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert stops.pending() == signal.SIGTERM  # the second did not exit
    with pytest.raises(SystemExit) as out, StopSignals() as stops:  # a run: it does
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert out.value.code == 128 + signal.SIGTERM


def test_a_study_driver_raises_on_a_stop_signal_and_restores_the_handlers():
    from reid_dhm.runs.signals import StopRequested, raise_on_stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested, match="stopped by SIGTERM"), raise_on_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_trial_stopped_by_a_signal_is_interrupted_not_failed():
    from reid_dhm.runs.errors import RunStopped
    from reid_dhm.study.trial import _ended

    stopped = _ended(RunStopped("stopped by SIGTERM in epoch 2", 143, signal.SIGTERM))
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert _ended(KeyboardInterrupt())["status"] == "interrupted"
    assert _ended(RunStopped("the evaluation failed: ...", 1)) == {
        "status": "failed", "error": "the evaluation failed: ..."}  # fmt: skip
    assert _ended(ValueError("bad lr"))["status"] == "failed"


@pytest.mark.slow
def test_sigterm_to_the_study_alone_stops_its_trials_and_the_rerun_resumes(tmp_path, tiny_cifar10):
    """`kill PID` of the study (not its group): the running trials must not live on as
    orphans holding their folders; one line says how to resume; the rerun finishes."""
    path = tmp_path / "long.yaml"
    path.write_text(f"""
name: long
seeds: [1, 2]
reference: [dsl]
settings:
  cls:
    dataset: cifar10
    overrides: [data.root={tiny_cifar10}, model.name=dhm_cifar_resnet20, data.workers=0,
      train.max_epoch=40, data.batch_size=20, train.eval_freq=0]
variants:
  dsl: [loss.mode=dsl]
  dhm: [loss.mode=dhm]
""")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reid_dhm", "study", str(path), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list((out / "runs").glob("*/*/*/checkpoint.pth")):  # a trial mid-run
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err
        assert "stopped by SIGTERM" in err and "run the same command again" in err
        deadline = time.time() + 30  # every trial process of the study is gone
        while True:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            assert time.time() < deadline, "trial processes outlived the stopped study"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    rows = _rows(out)
    assert all(r["status"] == "ok" for r in rows.values())  # none recorded as failed
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(rows)} finished earlier" in done.stdout
    assert "resuming the interrupted trial" in "".join(
        p.read_text() for p in (out / "runs").glob("*/*/*/log.txt")
    )
    rows = _rows(out)
    assert sum(r["status"] == "ok" for r in rows.values()) == 4
    resumed = [r for r in rows.values() if r["start_epoch"] > 0]
    assert resumed and all(r["start_epoch"] < r["epochs"] == 40 for r in resumed)


@pytest.mark.slow
def test_ray_executor_runs_the_study(tmp_path, tiny_reid, tiny_cifar10):
    pytest.importorskip("ray", reason="Ray is in the dev and study extras")
    path = write_study(tmp_path, tiny_reid, tiny_cifar10)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reid_dhm", "study", str(path), "--out", str(out),
           "--executor", "ray", "--cpus-per-run", "1", "--settings", "cls"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with --executor ray" in done.stdout
    rows = _rows(out)
    assert sorted(rows) == ["cls/dhm-adaptive/seed1", "cls/dhm-adaptive/seed2",
                            "cls/dsl/seed1", "cls/dsl/seed2"]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows.values())
    # each trial ran in a Ray worker process of its own, not in the driver
    pids = {json.loads((out / "runs" / key / "trial.json").read_text())["pid"] for key in rows}
    assert len(pids) == 4 and done.stdout.count("\n") >= 5


def test_ray_missing_is_one_line(monkeypatch):
    from reid_dhm.study.executors import Plan, run_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'reid-dhm\[study\]'"):
        next(run_ray([], Plan((None,), 1, 0.0)))


# -------------------------------------------------------------------------- reports
# the study whose tables docs/DHM_STUDY.md shows
CURRENT = "dhm_confirm"


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in STUDIES.glob("*/study.json")))
def test_committed_study_tables_are_generated_from_their_study_json(folder):
    data = json.loads((STUDIES / folder / "study.json").read_text())
    expected = study_markdown(data, summarize(data))
    assert (STUDIES / folder / "study.md").read_text() == expected
    assert f"by `reid-dhm study configs/studies/{folder}.yaml`" in expected
    if folder == CURRENT:
        assert (ROOT / "docs" / "DHM_STUDY.md").read_text() == expected


@pytest.mark.slow
def test_study_page_renders_in_headless_chromium(tmp_path):
    require_system(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    from reid_dhm.study import write_reports

    data = json.loads((STUDIES / CURRENT / "study.json").read_text())
    _, page_path = write_reports(tmp_path, data)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: r.url.startswith("http") and problems.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            sizes = page.evaluate(
                "Array.from(document.images).map(i => [i.className, i.naturalWidth])"
            )
            settings = len(summarize(data)["settings"])
            assert [k for k, _ in sizes].count("strip") == settings
            assert [k for k, _ in sizes].count("curves") == settings
            assert all(w > 300 for _, w in sizes)
            assert "Paired differences" in page.inner_text("pre")
        finally:
            browser.close()
    assert problems == []
