"""tools/test.py and tools/retrieve.py on a tiny trained checkpoint."""

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import retrieve as retrieve_tool  # noqa: E402
import test as test_tool  # noqa: E402


def test_test_tool_matches_training_evaluation(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "res.json"
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root", str(tiny_reid)]
    assert test_tool.main(argv + ["--per-branch", "--workers", "0", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mINP" in printed and "ranking" in printed
    res = json.loads(out.read_text())["folder"]
    assert set(res) == {"main", "aux1", "aux2"}
    trained = json.loads((tiny_checkpoint.parent / "results.json").read_text())["folder"]["main"]
    assert res["main"]["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert res["main"]["rank1"] == pytest.approx(trained["rank1"], abs=1e-6)

    assert test_tool.main(argv + ["--rerank", "--workers", "0"]) == 0
    assert "re-ranked" in capsys.readouterr().out


def test_test_tool_errors(tiny_reid, tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "nope.pth"), "--dataset", "folder", "--root", "x"]
    assert test_tool.main(argv) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_retrieve_folder_then_saved_index(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    index = tmp_path / "gallery.index"
    out1 = tmp_path / "r1"
    base = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--query",
        str(tiny_reid / "query"),
        "--topk",
        "3",
    ]
    gallery = str(tiny_reid / "bounding_box_test")
    argv = base + ["--gallery", gallery, "--save-index", str(index), "--output-dir", str(out1)]
    assert retrieve_tool.main(argv) == 0
    assert index.is_file()
    rows = list(csv.DictReader((out1 / "results.csv").open()))
    n_query = len(list((tiny_reid / "query").glob("*.jpg")))
    assert len(rows) == 3 * n_query
    assert {r["rank"] for r in rows} == {"1", "2", "3"}
    ranked = json.loads((out1 / "results.json").read_text())
    first = next(iter(ranked.values()))
    assert [h["rank"] for h in first] == [1, 2, 3]
    assert first[0]["distance"] <= first[1]["distance"] <= first[2]["distance"]
    assert (out1 / "results.png").stat().st_size > 0

    # The saved index gives the same ranking without re-embedding the gallery.
    out2 = tmp_path / "r2"
    assert retrieve_tool.main(base + ["--gallery", str(index), "--output-dir", str(out2)]) == 0
    again = json.loads((out2 / "results.json").read_text())
    assert [[h["gallery"] for h in v] for v in again.values()] == [
        [h["gallery"] for h in v] for v in ranked.values()
    ]


def test_retrieve_errors(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(tiny_checkpoint), "--output-dir", str(tmp_path)]
    assert retrieve_tool.main(base + ["--query", str(tmp_path / "nope.jpg"), "--gallery", "x"]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    bad = tmp_path / "bad.index"
    bad.write_bytes(b"garbage")
    q = str(tiny_reid / "query")
    assert retrieve_tool.main(base + ["--query", q, "--gallery", str(bad)]) == 2
    assert "bad.index" in capsys.readouterr().err
