"""tools/summary.py and the per-branch cost accounting behind it."""

import subprocess
import sys
from pathlib import Path

import pytest

from reid_dhm.models import build_model
from reid_dhm.models.complexity import branch_costs

ROOT = Path(__file__).resolve().parents[1]
from reid_dhm.cli import summary as summary_tool  # noqa: E402


def run_summary(*args):
    cmd = [sys.executable, "tools/summary.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_costs_add_up_and_deploy_costs_the_main_branch():
    model = build_model("dhm_resnet18", 10)
    rows = branch_costs(model, (64, 32))
    assert list(rows) == ["main", "aux1", "aux2", "classifiers", "train", "deploy"]
    branches = ("main", "aux1", "aux2")
    # Training total (measured in one pass) = the branches' embedding networks.
    assert rows["train"]["flops"] == sum(rows[b]["flops"] for b in branches)
    assert rows["train"]["params"] == sum(rows[b]["params"] for b in branches)
    # Deployed = the main branch's embedding network, counted the same way.
    assert rows["deploy"] == rows["main"]
    # The classifiers, apart: one (dim -> 10) linear layer per branch.
    dims = model.branch_feature_dims().values()
    assert rows["classifiers"]["flops"] == sum(2 * d * 10 for d in dims)
    assert rows["classifiers"]["params"] == sum(d * 10 + 10 for d in dims)
    assert rows["train"]["params"] + rows["classifiers"]["params"] == sum(
        p.numel() for p in model.parameters()
    )
    assert model.training  # mode restored


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_a_plain_model_costs_the_same_in_training_and_deployed(name):
    rows = branch_costs(build_model(name, 751), (64, 32))
    assert rows["train"] == rows["deploy"] == rows["main"]


def test_summary_cli_prints_table():
    res = run_summary("--model", "dhm_mobilenetv2", "--input", "64x32")
    assert res.returncode == 0, res.stderr
    for row in ("main", "aux1", "aux2", "training total", "deployed", "3 classifiers"):
        assert row in res.stdout
    assert "classifiers excluded" in res.stdout


def test_summary_cli_plain_model_ratio_is_one(capsys):
    # In-process (the subprocess test above covers the real command line): seconds saved.
    status = summary_tool.main(["--model", "resnet18", "--input", "32x32", "--num-classes", "5000"])
    assert status == 0
    assert "params 1.00x, FLOPs 1.00x" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "error: unknown model 'nope'; valid models are"),
        (["--input", "256by128"], "error: --input must look like 256x128, got '256by128'"),
        (["--input", "16x16"], "error: --input must be at least 32x32"),
        (["--num-classes", "0"], "error: num_classes must be an integer >= 1, got 0"),
        (["--model", "resnet18", "--branches", "aux9"], "error: unknown branch 'aux9'"),
    ],
)
def test_summary_cli_bad_input_is_one_line_with_status_2(args, message, capsys):
    status = summary_tool.main(args)
    out, err = capsys.readouterr()
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1, err
    assert out == ""
