"""What the pictures say: ranked-list labels, the training-curve panels, report labels.

Pixels are not compared: the functions that decide the text, panels and styles are.
"""

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_dhm.data.reid_datasets import scan_split
from reid_dhm.retrieval.result import ReidEvaluation, SplitFeatures, evaluate_branches
from reid_dhm.viz.curves import curve_panels, training_figure
from reid_dhm.viz.labels import camera_names, image_label, name_ids
from reid_dhm.viz.ranked import distance_decimals, first_true_ranks, ranked_labels
from reid_dhm.viz.report import evaluation_settings, report_config, write_report


def test_ranked_labels_name_cameras_as_the_files_and_distances_differ():
    queries = ["/d/query/0198_c2s1_000451_01.jpg", "/d/query/0007_c6s3_000100_00.jpg"]
    gallery = [
        "/d/bbt/0198_c5s1_000001_00.jpg", "/d/bbt/0042_c1s1_000001_00.jpg",
        "/d/bbt/holiday_snapshot_of_someone.jpg",
    ]  # fmt: skip
    ranked = np.array([[0, 1, 2], [1, 2, 0]])
    # Close distances that two or three decimals would print alike: four are needed.
    distances = np.array([[0.01231, 0.01236, 0.5], [0.25, 0.2512, 0.9]])
    labels = ranked_labels(queries, gallery, ranked, distances, "cosine", first_match=[None, 17])
    # Cameras as the file names count them (torchreid's camid would be 1 for c2).
    assert labels.query[0] == ["query", "id 198 c2"]
    assert labels.query[1] == ["query", "id 7 c6", "1st match: rank 17"]
    assert labels.tiles[0][0] == ["1: id 198 c5", "cosine 0.0123"]
    assert labels.tiles[0][1] == ["2: id 42 c1", "cosine 0.0124"]
    # A name without the Market layout is shown as (the start of) its name.
    assert (
        labels.tiles[0][2][0] == "3: holiday_s\u2026" and labels.tiles[1][1][1] == "cosine 0.2512"
    )
    assert "cosine distance" in labels.legend and "file name" in labels.legend
    # Without a metric the numbers are still named.
    assert ranked_labels(queries, gallery, ranked, distances).tiles[0][0][1] == "distance 0.0123"


def test_distance_decimals_grow_until_neighbours_differ():
    assert distance_decimals(np.array([[0.5, 0.75, 2.0]])) == 2
    assert distance_decimals(np.array([[0.01231, 0.01236]])) == 4
    assert distance_decimals(np.array([[1.0, 1.0, 1.0000004]])) == 6  # capped
    assert distance_decimals(np.array([[3.0, 3.0]])) == 2  # equal values may print alike


def test_first_true_ranks_count_everything_nearer():
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, float("inf")]])
    same = np.array([[False, False, True, True], [False, False, False, True]])
    # Row 0: two images are nearer than its nearest true match; row 1's only match is
    # hidden (inf, junk), so it has none.
    assert first_true_ranks(dist, same) == [3, None]


def test_name_ids_and_camera_names():
    assert name_ids("x/0198_c2s1_000451_01.jpg") == (198, 2)
    assert name_ids("x/-1_c3s1.jpg") == (-1, 3) and name_ids("x/face.png") is None
    assert image_label("x/0002_c1s1.jpg") == "id 2 c1"
    paths = ["0001_c1s1.jpg", "0002_c3s1.jpg", "0003_c3s2.jpg", "face.jpg"]
    assert camera_names(paths[:3], [0, 2, 2]) == {0: "c1", 2: "c3"}
    # A camera id whose files name no camera keeps torchreid's number, marked as such.
    assert camera_names(paths, [0, 2, 2, 5]) == {0: "c1", 2: "c3", 5: "camid 5"}


def _history(epochs=3, eval_epochs=(3,)):
    hist = []
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "lr": 3e-3 if e < 3 else 3e-4, "loss": 18.0 / e, "kl_weight": 1.0,
               "seconds": 9.0, "active": ["main", "aux1", "aux2"]}  # fmt: skip
        for i, b in enumerate(("aux2", "main", "aux1")):
            rec[f"ce/{b}"] = 4.0 / e + 0.1 * i
            rec[f"acc/{b}"] = 20.0 * e + i
        for t in ("main", "aux1", "aux2"):
            for s in ("main", "aux1", "aux2"):
                if t != s:
                    rec[f"kl/{t}->{s}"] = 0.3 / e  # all equal: the worst case for hiding
        if e in eval_epochs:
            rec.update({"test/mAP": 10.0 * e + 0.25, "test/rank1": 12.0 * e})
        hist.append(rec)
    return hist


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_curve_panels_separate_total_terms_lr_and_evaluation():
    panels = dict(curve_panels(_history()))
    assert panels["total loss"] == [("loss", "total")]
    assert [k for k, _ in panels["cross-entropy per branch"]] == ["ce/main", "ce/aux1", "ce/aux2"]
    assert "loss" not in dict(panels["cross-entropy per branch"])
    kl = dict(panels["KL mimicking (teacher \u2192 student)"])
    assert len(kl) == 6 and kl["kl/aux1->main"] == "aux1 \u2192 main"
    assert panels["learning rate"] == [("lr", "lr")]
    assert "KL weight" not in panels  # constant: nothing to see
    assert [k for k, _ in panels["evaluation (%)"]] == ["test/mAP", "test/rank1"]


def test_training_figure_styles_ticks_and_the_evaluation():
    import matplotlib.pyplot as plt

    fig = training_figure(_history())
    try:
        kl = _panel(fig, "KL mimicking (teacher \u2192 student)")
        styles = [(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in kl.lines]
        # Six equal curves: six different colours, and no two share colour+style+marker.
        assert len(kl.lines) == 6 and len({c for c, _, _ in styles}) == 6
        assert len({(s, m) for _, s, m in styles}) >= 4
        # Later lines are thinner and on top, so equal curves show nested, not hidden.
        widths = [ln.get_linewidth() for ln in kl.lines]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
        assert [t.get_text() for t in kl.get_legend().get_texts()][0] == "main \u2192 aux1"
        for ax in fig.axes:
            if ax.lines:  # integer epochs only on a 3-epoch run
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks == [1, 2, 3], (ax.get_title(), ticks)
        assert len(_panel(fig, "total loss").lines) == 1
        # One evaluation (at the end): its values as text, no lone dots.
        ev = _panel(fig, "evaluation (%)")
        texts = " ".join(t.get_text() for t in ev.texts)
        assert not ev.lines and "mAP: 30.2 %" in texts and "Rank-1: 36.0 %" in texts
        assert "after epoch 3" in texts
    finally:
        plt.close(fig)
    fig = training_figure(_history(4, eval_epochs=(2, 4)))
    try:
        ev = _panel(fig, "evaluation (%)")
        assert [list(ln.get_xdata()) for ln in ev.lines] == [[2, 4], [2, 4]] and not ev.texts
    finally:
        plt.close(fig)


def _tiny_eval(root):
    q = scan_split(Path(root) / "query", relabel=False)
    g = scan_split(Path(root) / "bounding_box_test", relabel=False)
    rng = np.random.default_rng(1)
    centre = {pid: rng.normal(size=8) for pid in {x[1] for x in q + g}}

    def feats(items):
        x = np.stack([centre[i[1]] + 1.2 * rng.normal(size=8) for i in items])
        return torch.from_numpy(x.astype(np.float32))

    qf, gf = feats(q), feats(g)
    cols = [np.array([x[k] for x in items]) for items in (q, g) for k in (1, 2)]
    return evaluate_branches(
        {"main": qf}, {"main": gf}, *cols[0::2], *cols[1::2],
        [x[0] for x in q], [x[0] for x in g], dataset="tiny",
    )  # fmt: skip


def test_report_names_cameras_and_files_as_the_file_names_do(tiny_reid, tmp_path):
    ev = _tiny_eval(tiny_reid)
    assert ev.query.camids.min() == 0  # torchreid counts cameras from 0
    page = write_report(tmp_path / "rep", ev, hardest=5, topk=6)
    text = page.read_text()
    tiles = re.findall(r'<div class="t [^"]*"[^>]* title="([^"]+)"><img src="[^"]+" alt="[^"]*">'
                       r"(?:query|\d+: \w+)<br>id (-?\d+) (c\d+)", text)  # fmt: skip
    assert len(tiles) == 5 * (1 + 6)
    for name, pid, cam in tiles:
        assert name_ids(html.unescape(name)) == (int(pid), int(cam[1:])), name
    # The camera-pair table's headers are the file names' cameras too.
    heads = re.findall(r"<th>(c\d+)</th>", text)
    file_cams = {f"c{name_ids(p)[1]}" for p in ev.gallery.paths}
    assert heads and set(heads) <= file_cams and "c0" not in heads
    assert re.search(r"AP \d+\.\d %", text)


def test_report_shows_the_first_true_match_beyond_the_topk(tmp_path):
    # One query (id 1, camera c1): its only true match is the farthest of six images.
    paths = [f"{tmp_path}/{n}" for n in ("0001_c1s1_0.jpg",)]
    gnames = [f"000{i + 2}_c2s1_0.jpg" for i in range(5)] + ["0001_c2s1_0.jpg"]
    from PIL import Image

    for p in paths + [f"{tmp_path}/{n}" for n in gnames]:
        Image.new("RGB", (32, 64), (120, 30, 30)).save(p)
    gf = torch.arange(1, 7, dtype=torch.float32)[:, None].repeat(1, 2)
    query = SplitFeatures.of(torch.zeros(1, 2), [1], [0], paths)
    gallery = SplitFeatures.of(gf, [2, 3, 4, 5, 6, 1], [1] * 6, [f"{tmp_path}/{n}" for n in gnames])
    raw = {"main": {"AP": np.array([1 / 6]), "valid": np.array([True]), "mAP": 1 / 6,
                    "mINP": 1 / 6, "cmc": np.array([0, 0, 0, 0, 0, 1.0]),
                    "num_valid_queries": 1}}  # fmt: skip
    ev = ReidEvaluation("t", "euclidean", False, (1,), raw, query, gallery)
    text = write_report(tmp_path / "r.html", ev, topk=3, single_file=True).read_text()
    assert "1st true match<br>at rank 6" in text and "AP 16.7 %" in text


def test_report_config_holds_the_evaluations_settings(tiny_reid):
    ev = _tiny_eval(tiny_reid)
    trained = {
        "test": {"per_branch": False, "report": False, "metric": "cosine",
                 "normalize_feature": True, "feature": "after"},
        "model": {"name": "m"},
    }  # fmt: skip
    settings = evaluation_settings(ev, {"per_branch": True})
    shown = report_config(trained, settings)
    assert shown["test"] == {"per_branch": True, "report": True, "metric": "euclidean",
                             "normalize_feature": False, "feature": "after", "rerank": False,
                             "ranks": [1, 5, 10, 20]}  # fmt: skip
    assert shown["model"] == {"name": "m"} and trained["test"]["report"] is False
    # Without the caller's word, per_branch is read off the evaluated branches.
    assert evaluation_settings(ev)["per_branch"] is False


@pytest.mark.parametrize("single", [False, True])
def test_report_forms(tiny_reid, tmp_path, single):
    ev = _tiny_eval(tiny_reid)
    page = write_report(tmp_path / "rep", ev, hardest=2, topk=3, single_file=single)
    assert page == (tmp_path / ("rep.html" if single else "rep/index.html"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep.html" if single else "rep"]
    sources = re.findall(r'(?:src|href)="([^"]*)"', page.read_text())
    assert len(sources) == 2 * (1 + 3)
    prefix = "data:image/jpeg;base64," if single else "images/"
    assert all(s.startswith(prefix) for s in sources)


def test_classification_evaluation_lists_the_main_branch_first():
    hist = [{"epoch": e, "loss": 1.0, "test/aux1/top1_err": 30.0, "test/top5_err": 5.0,
             "test/top1_err": 20.0} for e in (1, 2)]  # fmt: skip
    labels = [label for _, label in dict(curve_panels(hist))["evaluation (%)"]]
    assert labels == ["top-1 error", "top-5 error", "aux1 top-1 error"]
