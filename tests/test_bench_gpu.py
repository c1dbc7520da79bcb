"""benchmarks/bench_gpu.py runs on CPU at tiny sizes and prints every row it promises."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def run_bench(tmp_path, *extra) -> tuple[list[dict], str]:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["rows"], done.stdout


def table_rows(stdout: str) -> dict[str, list[str]]:
    """{case: cells} of the printed markdown table (header and rule left out)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("part", "---"):
            rows[cells[1]] = cells
    return rows


def check_positive(rows: list[dict], printed: dict[str, list[str]]) -> None:
    for row in rows:
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["ratio"] is not None and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        cells = printed[row["case"]]  # every measured row is printed, ratio included
        assert float(cells[2]) > 0 and float(cells[4]) > 0 and cells[5], cells


def test_eval_part_fast(tmp_path):
    rows, stdout = run_bench(tmp_path, "--parts", "eval")
    cases = [r["case"] for r in rows]
    assert all(r["part"] == "eval" for r in rows)
    for name in ("distances + stable sort (floor)", "distances only",
                 "evaluate ranking=auto (=scan)", "evaluate ranking=scan",
                 "evaluate ranking=sort"):  # fmt: skip
        assert any(c.startswith(name + ",") for c in cases), (name, cases)
    check_positive(rows, table_rows(stdout))
    floor = next(r for r in rows if r["case"].startswith("distances + stable sort"))
    assert floor["ratio"] == 1.0


@pytest.mark.slow
def test_tiny_run_prints_every_part(tmp_path):
    rows, stdout = run_bench(tmp_path)
    assert "bench_gpu on CPU" in stdout
    by_part = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row["case"])
    assert set(by_part) == {"step", "e2e", "loader", "eval"}
    step = by_part["step"]
    for case in ("torchvision mobilenetv2 fp32", "baseline mobilenetv2 fp32",
                 "dsl mobilenetv2 fp32", "dhm mobilenetv2 fp32"):  # fmt: skip
        assert case in step, step
    assert by_part["e2e"] == [
        "baseline mobilenetv2 fp32, 2 workers",
        "dhm mobilenetv2 fp32, 2 workers",
    ]
    assert by_part["loader"] == [
        f"augment={a}, {w} workers" for a in ("pil", "tensor") for w in (0, 2)
    ]
    check_positive(rows, table_rows(stdout))
