"""One evaluation result and what renders it: the table, the ranked PNG, the HTML report.

The report is checked for contents, self-containment and in a real headless Chromium;
``reid-dhm test`` and a training run's final evaluation go through the one evaluator.
"""

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_system, run_training

from reid_dhm.data.reid_datasets import scan_split
from reid_dhm.retrieval import cmc_at, evaluate
from reid_dhm.retrieval.result import ReidEvaluation, SplitFeatures, evaluate_branches
from reid_dhm.runs import evaluate_checkpoint
from reid_dhm.utils.checkpoint import load_checkpoint
from reid_dhm.viz.report import camera_pairs, write_report
from reid_dhm.viz.tables import format_classification, format_reid

CHROMIUM = "/usr/bin/chromium"


def _split(root):
    q = scan_split(Path(root) / "query", relabel=False)
    g = scan_split(Path(root) / "bounding_box_test", relabel=False)
    return q, g


def _features(q, g, dim=8):
    """Features that make identities findable but not perfectly (AP < 1 for some)."""
    rng = np.random.default_rng(0)
    centers = {pid: rng.normal(size=dim) for pid in {x[1] for x in q + g}}
    qf = np.stack([centers[x[1]] + 0.8 * rng.normal(size=dim) for x in q]).astype(np.float32)
    gf = np.stack([centers[x[1]] + 0.8 * rng.normal(size=dim) for x in g]).astype(np.float32)
    return torch.from_numpy(qf), torch.from_numpy(gf)


def _labels(items):
    return np.array([x[1] for x in items]), np.array([x[2] for x in items]), [x[0] for x in items]


def test_report_contents_are_self_contained(tiny_reid, tmp_path):
    q, g = _split(tiny_reid)
    qf, gf = _features(q, g)
    qp, qc, qpaths = _labels(q)
    gp, gc, gpaths = _labels(g)
    res = evaluate(qf, gf, qp, gp, qc, gc)
    ev = evaluate_branches({"main": qf}, {"main": gf}, qp, gp, qc, gc, qpaths, gpaths)
    out = tmp_path / "rep"
    page = write_report(
        out, ev, title="t", info={"checkpoint": "ckpt.pth"}, config={"model": {"name": "x"}},
        hardest=3, topk=4,
    )  # fmt: skip
    text = html.unescape(page.read_text())
    assert f"{100 * res['mAP']:.2f}" in text and f"{100 * res['mINP']:.2f}" in text
    assert "ckpt.pth" in text and '"name": "x"' in text and "<svg" in text
    # Thumbnails are copies inside the folder; nothing points at the data set.
    assert str(tiny_reid) not in text
    thumbs = sorted((out / "images").iterdir())
    assert len(thumbs) == 3 * (1 + 4) and all(t.stat().st_size > 0 for t in thumbs)
    # The hardest queries are the three lowest APs, hardest first.
    order = np.argsort(np.where(res["valid"], res["AP"], np.inf), kind="stable")[:3]
    shown = [line.split('data-query="')[1].split('"')[0] for line in text.split("<div class")
             if 'data-query="' in line]  # fmt: skip
    assert shown == [Path(qpaths[i]).name for i in order]
    assert json.loads((out / "metrics.json").read_text())["main"]["mAP"] == pytest.approx(
        res["mAP"]
    )
    # A second report replaces the first whole, leaving no temporary folder behind.
    write_report(out, ev, title="t", info=None, config=None, hardest=1, topk=2)
    assert len(list((out / "images").iterdir())) == 1 + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_camera_pairs_equal_evaluations_of_each_pair(tiny_reid):
    q, g = _split(tiny_reid)
    qf, gf = _features(q, g)
    qp, qc, _ = _labels(q)
    gp, gc, _ = _labels(g)
    pairs = camera_pairs(qf, gf, qp, gp, qc, gc, "euclidean")
    assert pairs and all(a != b for a, b in pairs)
    (a, b), cell = next(iter(pairs.items()))
    qi, gi = np.flatnonzero(qc == a), np.flatnonzero(gc == b)
    ref = evaluate(qf[qi], gf[gi], qp[qi], gp[gi], qc[qi], gc[gi])
    assert cell["mAP"] == pytest.approx(ref["mAP"])
    assert cell["rank1"] == pytest.approx(float(ref["cmc"][0]))


def _open_in_chromium(page_path: Path, shot: Path) -> dict:
    """Load ``page_path`` in headless Chromium (playwright) and report what happened:
    console errors, every request made, the images that did not load, the metrics cells,
    and a full-page screenshot at ``shot``."""
    from playwright.sync_api import sync_playwright

    seen = {"problems": [], "requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error" and seen["problems"].append(m.text))
            page.on("pageerror", lambda e: seen["problems"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            seen["ready"] = page.evaluate("document.body.dataset.ready")  # the script ran
            seen["cells"] = page.evaluate(
                "Object.fromEntries(Array.from(document.querySelectorAll('td[data-metric]'))"
                ".map(c => [c.dataset.branch + '/' + c.dataset.metric, c.innerText]))"
            )
            seen["broken"] = page.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.src)"
            )
            seen["images"] = page.evaluate("document.images.length")
            seen["config"] = page.evaluate("document.getElementById('config').textContent")
            # Sorting by mAP (a click) reorders rows without errors.
            page.locator("#metrics th", has_text="mAP").first.click()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return seen


def _check_page(seen: dict, metrics: dict, shot: Path) -> None:
    from PIL import Image

    assert seen["problems"] == [] and seen["ready"] == "1"
    for branch, row in metrics.items():
        for key in ("mAP", "mINP", "rank1"):
            assert seen["cells"][f"{branch}/{key}"] == f"{100 * row[key]:.2f}"
    assert seen["broken"] == [] and seen["images"] > 0
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.std() > 10  # not a blank page


def test_report_renders_in_headless_chromium(tiny_checkpoint, tiny_reid, tmp_path):
    require_system(CHROMIUM, "chromium")
    out = tmp_path / "report"
    evaluations = evaluate_checkpoint(
        tiny_checkpoint, "folder", tiny_reid, per_branch=True, workers=0, report_dir=out
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["main", "aux1", "aux2"] and list(evaluations) == ["folder"]
    seen = _open_in_chromium(out / "index.html", tmp_path / "report.png")
    _check_page(seen, metrics, tmp_path / "report.png")
    assert all(u.startswith(out.as_uri()) for u in seen["requests"]), seen["requests"]


def test_single_file_report_needs_nothing_outside_itself(tiny_checkpoint, tiny_reid, tmp_path):
    """``test --report R --single-file``: one file, whose config section is this
    evaluation's settings (not the training's), loading nothing but itself in Chromium."""
    require_system(CHROMIUM, "chromium")
    from reid_dhm.cli.test import build_parser

    args = build_parser().parse_args(
        ["--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root", str(tiny_reid),
         "--per-branch", "--workers", "0", "--report", str(tmp_path / "rep"), "--single-file"]
    )  # fmt: skip
    evaluations = evaluate_checkpoint(**vars(args))
    page = tmp_path / "rep.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep.html"]
    text = page.read_text()
    # Every source and link is inline; no CSS url() either.
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]*)', text)
    assert refs and all(r.startswith("data:image/jpeg;base64,") for r in refs), refs[:3]
    assert "url(" not in text
    # The training ran with test.per_branch=false, test.report=false; this evaluation
    # ran with --per-branch and --report, and its config section says so.
    trained = load_checkpoint(tiny_checkpoint)["config"]
    assert trained["test"]["per_branch"] is False and trained["test"]["report"] is False
    seen = _open_in_chromium(page, tmp_path / "single.png")
    shown = json.loads(seen["config"])["test"]
    assert shown["per_branch"] is True and shown["report"] is True
    assert shown["metric"] == evaluations["folder"].metric
    metrics = evaluations["folder"].table()
    _check_page(seen, metrics, tmp_path / "single.png")
    assert seen["requests"] and all(
        u == page.as_uri() or u.startswith("data:") for u in seen["requests"]
    ), seen["requests"]


def _tiny_evaluation(tiny_reid, ranks=(1, 5, 10, 20), **kwargs):
    q, g = _split(tiny_reid)
    qf, gf = _features(q, g)
    qp, qc, qpaths = _labels(q)
    gp, gc, gpaths = _labels(g)
    feats = ({"main": qf, "aux1": qf.flip(1)}, {"main": gf, "aux1": gf.flip(1)})
    return evaluate_branches(*feats, qp, gp, qc, gc, qpaths, gpaths, ranks=ranks, **kwargs)


def test_evaluation_table_has_todays_keys_per_branch(tiny_reid):
    ev = _tiny_evaluation(tiny_reid, ranks=(1, 5, 500), dataset="tiny")
    table = ev.table()
    assert list(table) == ["main", "aux1"] == list(ev.branches)
    for branch, row in table.items():
        assert list(row) == ["mAP", "mINP", "rank1", "rank5", "rank500", "num_valid_queries"]
        assert all(type(row[k]) is float and 0 <= row[k] <= 1 for k in list(row)[:-1])
        assert type(row["num_valid_queries"]) is int
        res = ev.raw[branch]  # evaluate's own mapping, per-query AP included
        assert row["mAP"] == res["mAP"] and row["num_valid_queries"] == res["num_valid_queries"]
        assert row["rank5"] == cmc_at(res, (5,))[5]
        assert res["AP"].shape == (len(ev.query),)
    # A rank beyond the gallery reads the CMC's last value (every positive is found).
    assert table["main"]["rank500"] == 1.0 and len(ev.gallery) < 500
    assert ev.main == table["main"] and json.loads(json.dumps(table)) == table
    q, g = _split(tiny_reid)
    qf, gf = _features(q, g)
    (qp, qc, _), (gp, gc, _) = _labels(q), _labels(g)
    ref = evaluate(qf, gf, qp, gp, qc, gc, max_rank=500)
    assert table["main"]["mAP"] == ref["mAP"] and table["main"]["rank1"] == ref["cmc"][0]
    assert torch.equal(ev.query.features, qf) and ev.query.paths == [x[0] for x in q]
    assert ev.dataset == "tiny" and ev.metric == "euclidean" and ev.ranks == (1, 5, 500)
    with pytest.raises(ValueError, match="rank"):
        _tiny_evaluation(tiny_reid, ranks=(0,))


def _evaluation_of(raw: dict, ranks=(1, 5), rerank=False) -> ReidEvaluation:
    empty = SplitFeatures.of(torch.zeros(0, 2), [], [], [])
    return ReidEvaluation("folder", "euclidean", rerank, ranks, raw, empty, empty)


def test_console_tables_keep_todays_text():
    main = {"mAP": 0.5, "mINP": 0.25, "cmc": np.array([0.5, 0.75, 1.0]), "max_rank": 50,
            "num_valid_queries": 4}  # fmt: skip
    aux = {**main, "mAP": 0.123, "mINP": 0.0456, "cmc": np.array([0.25, 0.5, 0.5])}
    assert format_reid(_evaluation_of({"main": main, "aux1": aux}, rerank=True)) == (
        "** folder: euclidean distance, re-ranked, 4 valid queries **\n"
        "branch      mAP   mINP     R1     R5\n"
        "main       50.0   25.0   50.0  100.0\n"
        "aux1       12.3    4.6   25.0   50.0"
    )
    assert format_reid(_evaluation_of({"main": main}, ranks=(1,))).splitlines()[0] == (
        "** folder: euclidean distance, 4 valid queries **"
    )
    table = {"main": {"top1_err": 12.5, "top5_err": 1.0, "num_images": 20},
             "aux1": {"top1_err": 30.25, "top5_err": 7.0, "num_images": 20}}  # fmt: skip
    assert format_classification(table) == (
        "** test set: 20 images **\n"
        "branch    top1 err  top5 err\n"
        "main         12.50      1.00\n"
        "aux1         30.25      7.00"
    )


def test_ranked_png_ranks_with_the_evaluation_metric(monkeypatch, tmp_path, tiny_reid):
    import reid_dhm.viz.ranked as ranked_module

    # One query, three gallery images: g0 is nearer in L2 distance, g1 in angle; g2 is
    # the query's identity from its own camera (junk: hidden, as the protocol ignores it).
    query = SplitFeatures.of(torch.tensor([[1.0, 0.0]]), [1], [0], ["q.jpg"])
    gallery = SplitFeatures.of(
        torch.tensor([[0.5, 0.5], [4.0, 0.2], [1.0, 0.0]]), [2, 3, 1], [1, 1, 0],
        ["g0.jpg", "g1.jpg", "g2.jpg"],
    )  # fmt: skip
    ranked = {}

    def capture(queries, gallery_paths, idx, matches, path, distances, **labels):
        ranked[metric] = idx[0].tolist()
        assert labels["metric"] == metric and metric in labels["title"]
        assert queries == ["q.jpg"] and not matches.any() and np.isfinite(distances).all()

    monkeypatch.setattr(ranked_module, "plot_ranked_results", capture)
    for metric in ("euclidean", "cosine"):
        ev = ReidEvaluation("d", metric, False, (1,), {}, query, gallery)
        ranked_module.write_ranked_png(ev, tmp_path / "ranked.png", queries=1, topk=2)
    assert ranked == {"euclidean": [0, 1], "cosine": [1, 0]}

    # The real picture: a title, then a row per query, the query and its top-k tiles of
    # 64 x 128 with their labels below.
    monkeypatch.undo()
    png = ranked_module.write_ranked_png(
        _tiny_evaluation(tiny_reid), tmp_path / "real.png", queries=3, topk=4
    )
    from PIL import Image

    with Image.open(png) as img:
        width, height = img.size
        rgb = np.asarray(img.convert("RGB"))
    assert width > 64 + 4 * 64 and height > 3 * 128
    green = (rgb[..., 1] > 140) & (rgb[..., 0] < 30) & (rgb[..., 2] < 30)
    assert green.any()  # some true match is framed green (the legend's key at least)


def test_test_tool_and_training_share_one_evaluator(tiny_reid, tmp_path, monkeypatch):
    """``reid-dhm test`` of a checkpoint gives the table its training's final test gave."""
    from reid_dhm.engines.reid_eval import ReidEvaluator

    seen = []
    real_call = ReidEvaluator.__call__

    def spy(self, model):
        evaluation = real_call(self, model)
        seen.append(evaluation)
        return evaluation

    monkeypatch.setattr(ReidEvaluator, "__call__", spy)
    out = tmp_path / "run"
    overrides = [
        f"data.root={tiny_reid}", "model.name=dhm_mobilenetv2", "model.pretrained=false",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.workers=0",
        "train.max_epoch=1", "train.fixbase_epoch=0", "test.vis_queries=2",
        "test.per_branch=true",
    ]  # fmt: skip
    result = run_training("folder", overrides, out)
    assert len(seen) == 1  # the final evaluation, through the evaluator
    trained = json.loads((out / "results.json").read_text())["folder"]
    assert trained == seen[0].table() and list(trained) == ["main", "aux1", "aux2"]
    assert result.evaluation["folder"] is seen[0]

    res = tmp_path / "test.json"
    evaluations = evaluate_checkpoint(
        out / "checkpoint.pth", "folder", tiny_reid, per_branch=True, workers=0, output=res
    )
    assert len(seen) == 2 and evaluations["folder"] is seen[1]
    tested = json.loads(res.read_text())["folder"]
    assert tested == seen[1].table()
    assert list(tested) == list(trained)
    for branch, row in trained.items():
        assert list(tested[branch]) == list(row)
        assert tested[branch]["num_valid_queries"] == row["num_valid_queries"]
        for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "rank20"):
            assert tested[branch][key] == pytest.approx(row[key], abs=1e-6), (branch, key)
