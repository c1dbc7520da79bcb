"""tools/summary.py and the per-branch cost accounting behind it."""

import subprocess
import sys
from pathlib import Path

from reid_dhm.models import build_model
from reid_dhm.models.complexity import branch_costs

ROOT = Path(__file__).resolve().parents[1]


def test_costs_add_up_and_deploy_costs_the_main_branch():
    model = build_model("dhm_resnet18", 10)
    rows = branch_costs(model, (64, 32))
    assert list(rows) == ["main", "aux1", "aux2", "train", "deploy"]
    assert rows["train"]["flops"] == sum(rows[b]["flops"] for b in ("main", "aux1", "aux2"))
    assert rows["train"]["params"] == sum(rows[b]["params"] for b in ("main", "aux1", "aux2"))
    assert rows["deploy"]["params"] == rows["main"]["params"]
    # Deployed inference returns the embedding: main minus its classifier (2 * 512 * 10).
    assert rows["deploy"]["flops"] == rows["main"]["flops"] - 2 * 512 * 10
    assert model.training  # mode restored


def test_summary_cli_prints_table():
    cmd = [sys.executable, "tools/summary.py", "--model", "dhm_mobilenetv2", "--input", "64x32"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for row in ("main", "aux1", "aux2", "training total", "deployed", "train/deploy ratio"):
        assert row in res.stdout


def test_summary_cli_rejects_unknown_model():
    cmd = [sys.executable, "tools/summary.py", "--model", "nope"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown model 'nope'" in res.stderr and "Traceback" not in res.stderr
