"""Checkpoints written before the run-layer redesign still resume, evaluate and export.

The files in ``tests/fixtures`` were written by ``tests/fixtures/make_legacy_checkpoints.py``
with the code of the commit that added them (before issue 16's changes); nothing here
regenerates them. They resume and evaluate through the run layer (``reid_dhm.runs``),
config resolution included, as ``reid-dhm train --resume`` / ``reid-dhm test`` do.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_training

from reid_dhm.cli import export as export_tool
from reid_dhm.runs import evaluate_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
REID = FIXTURES / "reid_osnet_x0_25.pth"
CIFAR = FIXTURES / "cifar_resnet20.pth"


def _copy(src: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    return Path(shutil.copy(src, run / "checkpoint.pth"))


def test_the_fixtures_are_what_the_tests_expect():
    reid = torch.load(REID, weights_only=True)
    assert reid["model_name"] == "dhm_osnet_x0_25" and reid["epoch"] == 1
    assert reid["config"]["train"]["max_epoch"] == 1 and reid["optimizer"]["state"]
    cifar = torch.load(CIFAR, weights_only=True)
    assert cifar["model_name"] == "dhm_cifar_resnet20" and cifar["epoch"] == 1


@pytest.mark.slow  # a resumed epoch, its evaluation, a test run and an ONNX export
def test_a_legacy_reid_checkpoint_resumes_evaluates_and_exports(tiny_reid, tmp_path, capsys):
    ckpt = _copy(REID, tmp_path)
    root = f"data.root={tiny_reid}"
    result = run_training(None, [root, "train.max_epoch=2"], resume=ckpt)
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2" in out and "mAP" in out
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    results = json.loads((ckpt.parent / "results.json").read_text())
    assert 0.0 <= results["folder"]["main"]["mAP"] <= 1.0 and result.results == results
    assert (ckpt.parent / "deployed.pth").is_file()

    legacy = _copy(REID, tmp_path / "b")
    result = run_training(None, [root], resume=legacy, eval_only=True)
    evaluated = json.loads((legacy.parent / "eval" / "results.json").read_text())
    assert evaluated["checkpoint_epochs"] == 1 and result.results == evaluated

    report = tmp_path / "test.json"
    tables = evaluate_checkpoint(legacy, "folder", tiny_reid, per_branch=True, output=report)
    table = json.loads(report.read_text())["folder"]
    assert set(table) == {"main", "aux1", "aux2"} and tables["folder"].table() == table

    onnx = tmp_path / "m.onnx"
    assert export_tool.main(["--checkpoint", str(legacy), "--output", str(onnx)]) == 0
    assert onnx.stat().st_size > 0


def test_a_legacy_classification_checkpoint_resumes_and_evaluates(tiny_cifar10, tmp_path, capsys):
    ckpt = _copy(CIFAR, tmp_path)
    root = f"data.root={tiny_cifar10}"
    result = run_training(None, [root, "train.max_epoch=2"], resume=ckpt)
    assert "epoch 2/2" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    results = json.loads((ckpt.parent / "results.json").read_text())
    assert 0.0 <= results["final"]["main"]["top1_err"] <= 100.0 and result.results == results

    legacy = _copy(CIFAR, tmp_path / "b")
    result = run_training(None, [root], resume=legacy, eval_only=True)
    evaluated = json.loads((legacy.parent / "eval" / "results.json").read_text())
    assert evaluated["checkpoint_epochs"] == 1 and "main" in evaluated["final"]
    assert result.results == evaluated
