"""What ``retrieve`` and ``summary`` take from a checkpoint: retrieve's distance, summary's
model, input size and class count."""

import json

import numpy as np
import torch

from reid_dhm import FeatureExtractor
from reid_dhm.cli import retrieve as retrieve_tool
from reid_dhm.cli import summary as summary_tool
from reid_dhm.runs.evaluate import trained_metric
from reid_dhm.runs.retrieve import retrieve_folder
from reid_dhm.utils.checkpoint import load_checkpoint


def _with_metric(checkpoint, metric, folder):
    """A copy of ``checkpoint`` whose training config evaluated with ``metric``."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["test"]["metric"] = metric
    path = folder / "checkpoint.pth"
    torch.save(ckpt, path)
    return path


def test_retrieve_ranks_by_the_checkpoints_metric_unless_told(
    tiny_reid, tiny_checkpoint, tmp_path, capsys
):
    query, gallery = tiny_reid / "query", tiny_reid / "bounding_box_test"
    trained = trained_metric(load_checkpoint(tiny_checkpoint)["config"])
    assert trained == "euclidean"  # retrieve used to rank by cosine whatever the model's
    run = retrieve_folder(tiny_checkpoint, query, gallery, tmp_path / "a", topk=3)
    printed = capsys.readouterr().out
    assert run.metric == trained
    assert "ranking by euclidean distance (squared L2): the checkpoint's test.metric" in printed
    # The same order as squared L2 over the model's own embeddings (what `test` ranks by).
    fx = FeatureExtractor.from_checkpoint(tiny_checkpoint, device="cpu")
    paths = sorted(str(p) for p in gallery.glob("*.jpg"))
    qpaths = sorted(str(p) for p in query.glob("*.jpg"))
    d = torch.cdist(fx(qpaths), fx(paths)).pow(2).numpy()
    for qi, q in enumerate(qpaths):
        got = [h["distance"] for h in run.ranked[q]]
        np.testing.assert_allclose(got, np.sort(d[qi])[:3], rtol=1e-4, atol=1e-5)

    # A checkpoint that evaluated with cosine: retrieve follows it, without --metric.
    (tmp_path / "cos").mkdir()
    cosine = _with_metric(tiny_checkpoint, "cosine", tmp_path / "cos")
    run = retrieve_folder(cosine, query, gallery, tmp_path / "b", topk=3)
    assert run.metric == "cosine"
    # --metric wins over the checkpoint's.
    run = retrieve_folder(cosine, query, gallery, tmp_path / "c", topk=3, metric="euclidean")
    assert run.metric == "euclidean" and "(squared L2): --metric" in capsys.readouterr().out


def test_retrieve_keeps_a_saved_indexs_metric(tiny_reid, tiny_checkpoint, tmp_path, capsys):
    index = tmp_path / "g.index"
    base = ["--checkpoint", str(tiny_checkpoint), "--query", str(tiny_reid / "query"),
            "--topk", "4"]  # fmt: skip
    argv = base + ["--gallery", str(tiny_reid / "bounding_box_test"), "--metric", "cosine"]
    assert (
        retrieve_tool.main(
            argv + ["--save-index", str(index), "--output-dir", str(tmp_path / "x1")]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "x2"
    assert retrieve_tool.main(base + ["--gallery", str(index), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ranking by cosine distance (1 - cosine similarity): the saved index's own" in printed
    # Distances printed to 4 significant digits, so that neighbours differ (it was 2
    # decimals, most of them 0.00-0.03).
    first = next(iter(json.loads((out / "results.json").read_text()).values()))
    assert f"{first[0]['distance']:.4g}" in printed
    # A --metric the saved index was not built with: one line, nothing ranked.
    argv = base + ["--gallery", str(index), "--metric", "euclidean", "--output-dir", str(out)]
    assert retrieve_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--metric euclidean: the saved index {index} ranks by" in err


def test_summary_reads_a_run_folder(tiny_checkpoint, capsys):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert summary_tool.main(["--checkpoint", str(tiny_checkpoint.parent)]) == 0
    out = capsys.readouterr().out
    # The model, input size and class count the run trained with, not the defaults.
    assert out.startswith(f"{ckpt['model_name']} from {tiny_checkpoint} @ 64x32, ")
    assert f", {ckpt['num_classes']} classes" in out and "aux2" in out
    assert "rows count embedding networks" not in out  # the old, cryptic footnote
    assert "the classifiers, used only in training" in out
    # --input still applies; the options the checkpoint fixes are refused in one line.
    assert summary_tool.main(["--checkpoint", str(tiny_checkpoint), "--input", "96x48"]) == 0
    assert "@ 96x48" in capsys.readouterr().out
    status = summary_tool.main(["--checkpoint", str(tiny_checkpoint), "--model", "resnet18"])
    err = capsys.readouterr().err
    assert (
        status == 2
        and err == "error: --checkpoint sets the model as it was trained; drop --model\n"
    )
