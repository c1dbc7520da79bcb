"""Issue 18, runs: stop signals sent to the whole job, concurrent runs, full or read-only
disks, features float32 cannot hold, damaged GalleryIndex headers.

Signals go to real process groups (``start_new_session=True``, then ``os.killpg``)
with DataLoader workers running; the lock is tested with a real second process; the
full disk is a real tmpfs (skipped, with the reason, where mounting is refused).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_dhm.cli import export as export_tool
from reid_dhm.cli import retrieve as retrieve_tool
from reid_dhm.cli import train as train_tool
from reid_dhm.retrieval import GalleryIndex, evaluate

TINY = [
    "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=64", "data.width=32",
    "data.batch_size=4", "data.test_batch_size=16", "train.fixbase_epoch=0",
    "test.vis_queries=0", "train.print_freq=1",
]  # fmt: skip


def reid_args(root, out, *extra):
    return ["--dataset", "folder", "--root", str(root), "--output-dir", str(out), *TINY, *extra]


def _popen(argv, cwd, *, python=("-m", "reid_dhm")):
    """``reid-dhm ...`` (or a driver script) in a process group of its own."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *python, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _wait_for(proc, prefix: str) -> None:
    """Read the run's stdout until a line starts with ``prefix``."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {proc.communicate()[1]}")


# ------------------------------------------------------------ signals to the whole group
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_stops_after_the_iteration(tiny_reid, tmp_path, sig):
    out = tmp_path / "run"
    argv = [*reid_args(tiny_reid, out), "train.max_epoch=3", "data.workers=2"]
    proc = _popen(["train", *argv], tmp_path)
    _wait_for(proc, "epoch 2/3 [1/")
    os.killpg(proc.pid, sig)  # what SLURM / systemd / timeout do: every process of the job
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(sig).name} in epoch 2 after iteration")
    assert (
        "holds epoch 1 complete" in last and f"resume with: reid-dhm train --resume {out}" in last
    )
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1


# The evaluation is entered, then the group is signalled from inside it: deterministic,
# however fast the tiny evaluation is. Everything else is the real command.
STOP_IN_EVALUATION = """
import os, signal, sys
from reid_dhm.engines import reid_eval
from reid_dhm.cli import main

extract = reid_eval.extract_loader_features
def signalled(*args, **kwargs):
    os.killpg(os.getpgrp(), int(os.environ["STOP_SIGNAL"]))
    return extract(*args, **kwargs)
reid_eval.extract_loader_features = signalled
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_stop_during_the_final_evaluation_stops_it_and_resume_finishes_the_run(
    tiny_reid, tmp_path, capsys
):
    out = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(STOP_IN_EVALUATION)
    os.environ["STOP_SIGNAL"] = str(int(signal.SIGTERM))
    try:
        argv = ["train", *reid_args(tiny_reid, out), "train.max_epoch=1", "data.workers=1"]
        proc = _popen(argv, tmp_path, python=(str(driver),))
        _, err = proc.communicate(timeout=300)
    finally:
        del os.environ["STOP_SIGNAL"]
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM during the evaluation")
    assert (
        f"finish the run (its evaluation and outputs) with: reid-dhm train --resume {out}" in last
    )
    # Training finished (its checkpoint is there); the evaluation and its outputs did not.
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not (out / "results.json").exists() and not (out / "deployed.pth").exists()
    # The resume command finishes the run's own outputs, in the run folder.
    capsys.readouterr()
    assert train_tool.main(["--resume", str(out)]) == 0
    said = capsys.readouterr().out
    assert "final evaluation never completed" in said
    for name in ("results.json", "deployed.pth", "training_curves.png"):
        assert (out / name).is_file(), name
    assert "main" in json.loads((out / "results.json").read_text())["folder"]
    assert not (out / "eval").exists()
    # The same epoch written again with its metrics: the previous checkpoint is not lost.
    assert not (out / "checkpoint.prev.pth").exists()
    assert torch.load(out / "checkpoint.pth", weights_only=True)["metrics"]
    # A finished run resumed again is evaluated into eval/, its files left alone.
    before = (out / "results.json").read_bytes()
    assert train_tool.main(["--resume", str(out)]) == 0
    assert (out / "eval" / "results.json").is_file()
    assert (out / "results.json").read_bytes() == before


def test_loader_workers_ignore_stop_signals():
    from torch.utils.data import DataLoader

    from reid_dhm.engines.reid_eval import ReidEvaluator
    from reid_dhm.engines.seeding import ignore_stop_signals

    class Dispositions(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            ignored = [
                signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGINT)
            ]
            return torch.tensor(ignored)

    train = DataLoader(Dispositions(), num_workers=1, worker_init_fn=ignore_stop_signals)
    # Evaluation loaders come from torchreid; the evaluator makes their workers ignore too.
    query, gallery = DataLoader(Dispositions(), num_workers=1), DataLoader(Dispositions())
    evaluator = ReidEvaluator(query, gallery)
    for loader in (train, evaluator.query_loader):
        assert all(bool(batch.all()) for batch in loader)
    assert evaluator.gallery_loader.worker_init_fn is None  # no workers: nothing to change


# ------------------------------------------------------------ one run per folder
@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_fails_at_once_naming_the_first(tiny_reid, tmp_path):
    from reid_dhm.runs.folders import lock_path, run_folder_lock

    out = tmp_path / "run"
    first = _popen(["train", *reid_args(tiny_reid, out), "train.max_epoch=50", "data.workers=0"],
                   tmp_path)  # fmt: skip
    try:
        _wait_for(first, "epoch 1/50 [1/")
        second = subprocess.run(
            [sys.executable, "-m", "reid_dhm", "train", *reid_args(tiny_reid, out),
             "train.max_epoch=1", "data.workers=0"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"error: {out} is in use by another run (PID {first.pid}, lock {lock_path(out)}); "
            "wait for it to end, or choose another --output-dir"
        )
        # The first run's folder was neither moved aside nor written by the second.
        assert not list(tmp_path.glob("run.*"))
        assert (out / "config.yaml").is_file()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    # A killed run's lock dies with it: its PID is still in the file, yet nothing blocks.
    assert lock_path(out).read_text().strip() == str(first.pid)
    with run_folder_lock(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())
    assert lock_path(out).read_text() == ""  # released


# ------------------------------------------------------------ full and read-only disks
@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, options)``: a real tmpfs under ``tmp_path``; unmounted after."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs was refused ({done.stderr.strip()}): needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_is_one_line_and_loses_nothing(
    tiny_reid, tiny_checkpoint, mount_tmpfs, capsys
):
    size = tiny_checkpoint.stat().st_size
    # Room for one checkpoint and the run's small files, not for the second epoch's.
    disk = mount_tmpfs("disk", f"size={int(size * 1.5) // 4096 * 4096}")
    out = disk / "run"
    code = train_tool.main([*reid_args(tiny_reid, out), "train.max_epoch=2", "data.workers=0"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: no space left on the device to write {out / 'checkpoint.pth'}")
    needed = int(err.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
    assert 0.9 * size < needed < 1.1 * size  # the real size of the checkpoint it could not write
    # Nothing lost: epoch 1's checkpoint is intact, no temporary file is left.
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(
    tiny_reid, tmp_path, mount_tmpfs, capsys
):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    missing = str(tmp_path / "no-such-checkpoint.pth")  # any work would fail on it first
    read_only = mount_tmpfs("ro", "ro,size=1m")
    cases = {
        "train": lambda out: train_tool.main(reid_args(tiny_reid, out, "data.workers=0")),
        "retrieve": lambda out: retrieve_tool.main(
            [
                "--checkpoint",
                missing,
                "--query",
                missing,
                "--gallery",
                str(tmp_path),
                "--output-dir",
                out,
            ]
        ),  # fmt: skip
        "export": lambda out: export_tool.main(
            ["--checkpoint", missing, "--output", f"{out}/reid.onnx"]
        ),
    }
    for command, run in cases.items():
        assert run(str(a_file)) == 1, command
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{a_file} is a file, not a folder" in err, (command, err)
        assert run(str(read_only / "out")) == 1, command
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cannot be written: Read-only file system" in err, (command, err)
        assert str(read_only / "out") in err


# ------------------------------------------------------------ evaluate: scale and zeros
def _problem(seed=0):
    rng = np.random.default_rng(seed)
    qf, gf = rng.normal(size=(12, 16)), rng.normal(size=(40, 16))
    q_pids = rng.integers(0, 6, 12)
    g_pids = np.concatenate([np.arange(6), rng.integers(0, 6, 34)])
    return qf, gf, q_pids, g_pids, np.zeros(12, int), np.ones(40, int)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_of_tiny_scale_rank_as_at_ordinary_scale(metric):
    qf, gf, *labels = _problem()
    ordinary = evaluate(qf, gf, *labels, metric=metric)
    tiny = evaluate(qf * 1e-50, gf * 1e-50, *labels, metric=metric)  # 0 in float32
    assert tiny["mAP"] == ordinary["mAP"] and tiny["mINP"] == ordinary["mINP"]
    np.testing.assert_array_equal(tiny["AP"], ordinary["AP"])
    np.testing.assert_array_equal(tiny["cmc"], ordinary["cmc"])
    if metric == "cosine":  # one row of its own tiny scale among ordinary ones
        mixed = gf.copy()
        mixed[5] *= 1e-60
        np.testing.assert_array_equal(
            evaluate(qf, mixed, *labels, metric=metric)["AP"], ordinary["AP"]
        )


def test_an_all_zero_feature_under_cosine_is_refused_naming_it():
    qf, gf, *labels = _problem()
    gf[7] = 0
    with pytest.raises(ValueError, match=r"^gf row 7 \(gallery 7\) is all zeros"):
        evaluate(qf, gf, *labels, metric="cosine")
    qf[2] = 0
    with pytest.raises(ValueError, match=r"^qf row 2 \(query 2\) is all zeros"):
        evaluate(qf, gf, *labels, metric="cosine")
    evaluate(qf, gf, *labels, metric="euclidean")  # a zero vector has a euclidean distance


# ------------------------------------------------------------ GalleryIndex files
def _rewrite(path: Path, **changes) -> None:
    """Save ``path`` again with some arrays or header fields replaced."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    raw = changes.pop("raw_header", None)
    header.update(changes.pop("header", {}))
    text = raw(header) if raw else json.dumps(header)
    arrays["header"] = np.frombuffer(text.encode(), dtype=np.uint8)
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_gallery_index_files_with_bad_headers_or_ids_are_one_line_naming_the_file(tmp_path):
    feats = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    good = tmp_path / "good.index"
    GalleryIndex.build(feats, pids=np.arange(30), camids=np.zeros(30, int)).save(good)
    assert len(GalleryIndex.load(good)) == 30

    def load_error(name, **changes) -> str:
        path = tmp_path / name
        path.write_bytes(good.read_bytes())
        _rewrite(path, **changes)
        with pytest.raises(ValueError) as info:
            GalleryIndex.load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return message

    kind = load_error("kind.index", header={"kind": "ivf", "params": {"nprobe": 4}})
    assert "the header says a 'ivf' index, the faiss data holds a IndexFlat" in kind
    deep = load_error("deep.index", raw_header=lambda h: json.dumps(h)[:-1] + ', "x": '
                      + "[" * 100_000 + "]" * 100_000 + "}")  # fmt: skip
    assert "nested too deeply" in deep
    pids = np.arange(30, dtype=np.float64)
    pids[3] = np.nan
    assert "pids must hold integers" in load_error("nan.index", pids=pids)
