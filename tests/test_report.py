"""The HTML evaluation report: contents, self-containment, and a real headless Chromium."""

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_system

from reid_dhm.cli import test as test_tool  # noqa: E402
from reid_dhm.data.reid_datasets import scan_split
from reid_dhm.report import camera_pairs, write_report
from reid_dhm.retrieval import evaluate

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
    out = tmp_path / "rep"
    page = write_report(
        out, {"main": res}, qf, gf, qp, gp, qc, gc, qpaths, gpaths,
        info={"checkpoint": "ckpt.pth"}, config={"model": {"name": "x"}}, hardest=3, topk=4,
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
    write_report(out, {"main": res}, qf, gf, qp, gp, qc, gc, qpaths, gpaths, hardest=1, topk=2)
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


def test_report_renders_in_headless_chromium(tiny_checkpoint, tiny_reid, tmp_path):
    require_system(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report"
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root",
            str(tiny_reid), "--workers", "0", "--per-branch", "--report", str(out)]  # fmt: skip
    assert test_tool.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["main", "aux1", "aux2"]

    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate("document.body.dataset.ready") == "1"  # the script ran
            for branch, row in metrics.items():
                for key in ("mAP", "mINP", "rank1"):
                    cell = page.locator(f'td[data-metric="{key}"][data-branch="{branch}"]')
                    assert cell.inner_text() == f"{100 * row[key]:.2f}"
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.src)"
            )
            assert broken == [] and page.evaluate("document.images.length") > 0
            # Sorting by mAP (a click) reorders rows without errors.
            page.locator("#metrics th", has_text="mAP").first.click()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(out.as_uri()) for u in requests), requests
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 900 and pixels.std() > 10  # not a blank page
