"""reid-dhm test (``reid_dhm.runs.evaluate_checkpoint``) and retrieve on a tiny checkpoint.

What the evaluation computes is checked on the library call; the command lines' own
work (argument parsing, one-line errors, exit statuses, printed notes) through ``main``.
"""

import csv
import json
import re

import pytest

from reid_dhm.cli import retrieve as retrieve_tool  # noqa: E402
from reid_dhm.cli import test as test_tool  # noqa: E402
from reid_dhm.runs import evaluate_checkpoint


def test_test_tool_matches_training_evaluation(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "res.json"
    args = (tiny_checkpoint, "folder", tiny_reid)
    evaluations = evaluate_checkpoint(*args, per_branch=True, workers=0, output=out)
    printed = capsys.readouterr().out
    assert "mINP" in printed and "ranking" in printed
    res = json.loads(out.read_text())["folder"]
    assert set(res) == {"main", "aux1", "aux2"} and evaluations["folder"].table() == res
    trained = json.loads((tiny_checkpoint.parent / "results.json").read_text())["folder"]["main"]
    assert res["main"]["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert res["main"]["rank1"] == pytest.approx(trained["rank1"], abs=1e-6)

    reranked = evaluate_checkpoint(*args, rerank=True, workers=0)
    assert "re-ranked" in capsys.readouterr().out and reranked["folder"].rerank


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


def test_test_tool_ranks(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root", str(tiny_reid)]
    # --ranks 0 used to report cmc[-1] as "R0" without a word.
    assert test_tool.main(argv + ["--ranks", "0", "5"]) == 2
    assert "rank must be an integer >= 1, got 0" in capsys.readouterr().err
    # A rank beyond the gallery used to raise IndexError at cmc[r - 1].
    out = tmp_path / "res.json"
    ranks = ["1", "500"]
    assert test_tool.main(argv + ["--workers", "0", "--ranks", *ranks, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    n_gallery = int(re.search(r"x (\d+) gallery images", printed).group(1))
    assert f"the gallery has {n_gallery} images, so Rank-k for k > {n_gallery}" in printed
    assert json.loads(out.read_text())["folder"]["main"]["rank500"] == 1.0


def _retrieve_base(tiny_reid, tiny_checkpoint, out):
    return [
        "--checkpoint", str(tiny_checkpoint), "--query", str(tiny_reid / "query"),
        "--topk", "4", "--output-dir", str(out),
    ]  # fmt: skip


def _galleries(out):
    return [
        [h["gallery"] for h in v] for v in json.loads((out / "results.json").read_text()).values()
    ]


def test_retrieve_rerank(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    gallery = str(tiny_reid / "bounding_box_test")
    flat, ivf = tmp_path / "flat.index", tmp_path / "ivf.index"
    plain, folder_rr, index_rr = tmp_path / "plain", tmp_path / "folder_rr", tmp_path / "index_rr"
    argv = _retrieve_base(tiny_reid, tiny_checkpoint, plain)
    assert retrieve_tool.main(argv + ["--gallery", gallery, "--save-index", str(flat)]) == 0
    argv = _retrieve_base(tiny_reid, tiny_checkpoint, folder_rr)
    assert retrieve_tool.main(argv + ["--gallery", gallery, "--rerank"]) == 0
    assert "re-ranked distances" in capsys.readouterr().out
    rows = list(csv.DictReader((folder_rr / "results.csv").open()))
    n_query = len(list((tiny_reid / "query").glob("*.jpg")))
    assert len(rows) == 4 * n_query and (folder_rr / "results.png").is_file()
    ranked = json.loads((folder_rr / "results.json").read_text())
    for hits in ranked.values():
        d = [h["distance"] for h in hits]
        assert d == sorted(d) and all(0 <= x <= 1 for x in d)  # re-ranked distances
    assert _galleries(folder_rr) != _galleries(plain)  # re-ranking changed something
    # A saved flat index keeps its vectors: the same re-ranking without the folder.
    argv = _retrieve_base(tiny_reid, tiny_checkpoint, index_rr)
    assert retrieve_tool.main(argv + ["--gallery", str(flat), "--rerank"]) == 0
    assert _galleries(index_rr) == _galleries(folder_rr)
    # An ivf index does not: a clear error instead of a wrong or partial re-ranking.
    base = _retrieve_base(tiny_reid, tiny_checkpoint, tmp_path / "ivf")
    assert (
        retrieve_tool.main(base + ["--gallery", gallery, "--kind", "ivf", "--save-index", str(ivf)])
        == 0
    )
    capsys.readouterr()
    assert retrieve_tool.main(base + ["--gallery", str(ivf), "--rerank"]) == 2
    err = capsys.readouterr().err
    assert "--rerank needs the gallery features" in err and "'ivf' index" in err


def test_retrieve_option_conflicts_and_missing_png(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    import shutil

    import numpy as np

    moved = tmp_path / "gallery"
    shutil.copytree(tiny_reid / "bounding_box_test", moved)
    index = tmp_path / "g.index"
    base = _retrieve_base(tiny_reid, tiny_checkpoint, tmp_path / "out")
    assert retrieve_tool.main(base + ["--gallery", str(moved), "--save-index", str(index)]) == 0
    before = index.read_bytes()
    capsys.readouterr()
    # Options for building an index, given a saved index: used to be ignored silently.
    for extra in (["--save-index", str(tmp_path / "other.index")], ["--kind", "hnsw"]):
        assert retrieve_tool.main(base + ["--gallery", str(index), *extra]) == 2
        assert f"{extra[0]} applies to a gallery folder" in capsys.readouterr().err
    assert index.read_bytes() == before and not (tmp_path / "other.index").exists()
    # Features saved as .npy are not an index: one line, no traceback.
    npy = tmp_path / "feats.npy"
    np.save(npy, np.zeros((3, 4), np.float32))
    assert retrieve_tool.main(base + ["--gallery", str(npy)]) == 2
    assert "feats.npy: not a GalleryIndex file" in capsys.readouterr().err
    # Gallery images gone: CSV and JSON are written, the PNG is skipped and said so
    # (it used to be skipped silently while ".png" was still announced).
    shutil.rmtree(moved)
    out = tmp_path / "out2"
    argv = _retrieve_base(tiny_reid, tiny_checkpoint, out) + ["--gallery", str(index)]
    assert retrieve_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "no PNG: gallery image" in printed and "not found" in printed
    assert (
        "wrote results.csv, results.json in" in printed and ".png" not in printed.splitlines()[-1]
    )
    assert (out / "results.json").is_file() and not (out / "results.png").exists()
