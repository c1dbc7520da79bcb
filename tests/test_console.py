"""Issue 20, the console: what a person sees while a run trains.

A real tiny run off a terminal (a subprocess, its output captured as CI's log would
hold it) names its output folder first, folds torchreid's data set tables into one line,
prints the time left for the whole run and fits every line in 120 columns; on a terminal
one bar covers every iteration of the run; long evaluations and data generation say
what they are doing.
"""

import os
import re
import subprocess
import sys
from collections import OrderedDict

import torch

from reid_dhm import DHMLoss, build_model
from reid_dhm.data.synthreid import SynthReIDSpec, generate_synthreid
from reid_dhm.engines.classification import ClassificationTask
from reid_dhm.engines.console import WIDTH, epoch_line
from reid_dhm.engines.hooks import ConsoleHook
from reid_dhm.engines.optim import build_optimizer
from reid_dhm.engines.trainer import Trainer
from reid_dhm.utils.progress import Progress

TIME = r"\d+:\d\d"  # tqdm's 02:03 / 1:02:03
# What torchreid prints while it builds a data manager.
BOILERPLATE = ("Building train transforms", "=> Loading", "# ids", "Summary", "source images")


def test_a_run_off_a_terminal_prints_the_time_left_in_short_lines(tiny_reid, tmp_path):
    out = tmp_path / "run"
    argv = [
        "train", "--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(out),
        "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=32",
        "data.width=32", "data.batch_size=8", "data.workers=0", "train.fixbase_epoch=0",
        "test.vis_queries=0", "train.max_epoch=2", "train.print_freq=2",
    ]  # fmt: skip
    # one thread: a tiny model, whose threads would only contend on a busy machine
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reid_dhm", *argv], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    long = [x for x in lines + proc.stderr.splitlines() if len(x) > WIDTH]
    assert not long, long
    first_epoch = next(i for i, x in enumerate(lines) if x.startswith("epoch "))
    assert lines[0] == f"=> output folder {out}"  # named before anything else
    # torchreid's ~40 lines are one summary line
    assert not [x for x in lines if any(b in x for b in BOILERPLATE)], lines[:first_epoch]
    summary = [x for x in lines[:first_epoch] if x.startswith("=> folder: train ")]
    assert len(summary) == 1 and re.search(r"query \d+ ids / \d+ images, gallery", summary[0])
    assert "(branches main/aux1/aux2)" in lines[first_epoch - 1]
    # the time left for the whole run: on every in-epoch line and after each epoch but the last
    progress = [x for x in lines if re.match(r"epoch \d/2 \[\d+/\d+\]", x)]
    assert progress and all(re.search(rf"  left {TIME}$", x) for x in progress)
    epoch_lines = [x for x in lines if re.match(r"epoch \d/2  loss", x)]
    assert len(epoch_lines) == 2
    assert re.search(rf"  left {TIME}$", epoch_lines[0]) and "left" not in epoch_lines[1]
    # the elapsed time once, at the end
    assert sum("done in" in x for x in lines) == 1 and "Elapsed" not in proc.stdout
    assert "mAP" in proc.stdout


def _tiny_trainer(hooks, batches=6, max_epoch=2):
    torch.manual_seed(0)
    model = build_model("dhm_cifar_resnet20", 3)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0]))] * batches
    return Trainer(
        ClassificationTask(data, None), model, DHMLoss("dhm"),
        build_optimizer(model, "sgd", lr=0.01), max_epoch=max_epoch, hooks=hooks,
    )  # fmt: skip


def test_on_a_terminal_one_bar_covers_the_whole_run(capsys):
    lines = []
    hook = ConsoleHook(3, log=lines.append, terminal=True)
    trainer = _tiny_trainer([hook])
    reads = []
    running = trainer.running
    trainer.running = lambda: reads.append(trainer.step) or running()
    for epoch in range(2):
        trainer.train_epoch(epoch)
    hook.after_train()
    bar = capsys.readouterr().err
    assert "epoch 2/2" in bar and "/12 [" in bar  # 2 epochs x 6 iterations
    assert "loss " in bar  # the loss, refreshed at the print interval
    assert reads == [2, 5, 2, 5]  # ... and read from the device only then
    assert len(lines) == 2 and re.search(rf"  left {TIME}$", lines[0])
    assert "left" not in lines[1]


def test_the_epoch_line_fits_120_columns_with_many_branches():
    branches = ["main", "aux1", "aux2", "aux3"]
    record = OrderedDict(epoch=250, lr=3e-4, frozen=True, loss=23.4567)
    record.update({f"ce/{b}": 12.3456 for b in branches})
    record.update({f"kl/{a}->{b}": 1.2345 for a in branches for b in branches if a != b})
    record.update({f"tri/{b}": 0.3456 for b in branches})
    record.update({f"acc/{b}": 100.0 for b in branches})
    record["seconds"] = 1234.0
    line = epoch_line(record, 250, digits=3, left=36000.0)
    assert len(line) <= WIDTH and line.startswith("epoch 250/250  loss 23.457")
    assert "left 10:00:00" in line and "kl 14.814" in line and "[frozen]" in line
    # The usual case (three branches, a re-ID run) keeps every branch and every digit.
    three = OrderedDict((k, v) for k, v in record.items() if "aux3" not in k and "tri" not in k)
    three.update(loss=17.4501, frozen=False, epoch=12, seconds=443.0)
    line = epoch_line(three, 12, digits=3, left=5000.0)
    assert line == (
        "epoch 12/12  loss 17.450  ce 12.346/12.346/12.346  kl 7.407  acc 100.0/100.0/100.0%"
        "  lr 3.00e-04  443 s  left 1:23:20"
    )


def test_long_loops_off_a_terminal_print_lines_with_the_time_left():
    lines = []
    with Progress(40, "query features", "images", terminal=False, every=0, log=lines.append) as p:
        for _ in range(4):
            p.update(10)
    assert lines[0].startswith("query features: 10/40 images (25%), ")
    assert all(re.search(rf"{TIME} left$", x) for x in lines) and len(lines) == 4
    quiet = []
    with Progress(40, "gallery", "images", terminal=False, log=quiet.append) as p:
        p.update(40)
    assert not quiet  # a loop shorter than the interval says nothing


def test_synthreid_generation_is_announced_once(tmp_path):
    spec = SynthReIDSpec(
        num_train_ids=2, num_test_ids=2, num_cameras=2, images_per_camera=(1, 1),
        cameras_per_id=(2, 2), num_distractors=0, num_junk=0, height=32, width=16,
    )  # fmt: skip
    lines = []
    dest = generate_synthreid(tmp_path, spec, log=lines.append)
    assert len(lines) == 1 and str(dest) in lines[0] and "synthreid" in lines[0]
    generate_synthreid(tmp_path, spec, log=lines.append)  # cached: nothing to say
    assert len(lines) == 1
