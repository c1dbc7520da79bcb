"""A self-contained HTML evaluation report: metrics, CMC, hardest queries, camera pairs.

``write_report`` turns a :class:`~reid_dhm.retrieval.result.ReidEvaluation`
(features, labels, image paths and the ``evaluate`` result of every branch) into a
report that opens offline in any browser, in one of two forms:

* a folder: ``index.html`` (inline CSS, an inline SVG CMC curve, a few lines of
  JavaScript to sort tables), ``metrics.json`` and ``images/`` with small JPEG copies of
  the query and gallery images shown;
* one HTML file (``single_file=True``) with the same page and the thumbnails embedded
  as ``data:`` URIs, to mail or attach alone.

Nothing links back to the data folder, so either form can be zipped, mailed or
published as it is. Images are labelled as their file names spell them: identity and
camera (``0198_c2...``: ``id 198 c2``; torchreid's own camera ids count from 0), and
each thumbnail's file name is its tooltip.

Contents: the metrics table (every evaluated branch), the CMC curve, the hardest
queries (lowest AP) with their top-k gallery images marked true (same identity, other
camera), false, or junk (same identity, same camera: ignored by the protocol) and,
where the top-k holds no true match, the rank of the first; a per-camera-pair
breakdown (mAP and Rank-1 of each query camera against each other gallery camera
alone); and the config, whose ``test`` section is this evaluation's own settings.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..retrieval import evaluate
from ..retrieval.result import ReidEvaluation
from ..utils.branches import MAIN
from ..utils.images import NO_PIXEL_LIMIT, read_image
from ..utils.io import atomic_path
from .labels import camera_names, merged_camera_names
from .ranked import first_true_ranks

THUMB = (128, 64)  # (H, W) of the copied thumbnails

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3;cursor:pointer}td.l,th.l{text-align:left}
.q{display:flex;align-items:flex-start;gap:6px;margin:10px 0}.t{text-align:center;
font-size:11px;width:72px}.t img{display:block;margin:0 auto;border:3px solid #888}
.query{margin-right:14px}.miss{color:#d62020}.true img{border-color:#1a9e1a}
.false img{border-color:#d62020}.junk img{border-color:#999;opacity:.55}
.query img{border-color:#333}.meta{color:#555;font-size:13px}pre{background:#f7f7f7;
padding:10px;overflow:auto;font-size:12px}.legend span{margin-right:14px}
"""

# Click a column header to sort the table by it (numbers numerically).
_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.asc !== '1';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    th.dataset.asc = asc ? '1' : '0';
  });
});
document.body.dataset.ready = '1';
"""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


class _Thumbs:
    """Thumbnail sources for ``<img src>``: JPEG files in ``folder`` (the folder report,
    ``images/<name>``) or, with no folder, ``data:`` URIs (the single-file report)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def src(self, image: str, name: str) -> str:
        # The evaluation read these files under the run's own pixel limit.
        img = read_image(image, NO_PIXEL_LIMIT, warn_large=False)
        buf = io.BytesIO()
        img.resize(THUMB[::-1], Image.BILINEAR).save(buf, "JPEG", quality=88)
        if self.folder is None:
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        (self.folder / name).write_bytes(buf.getvalue())
        return f"{self.folder.name}/{name}"


# CMC lines: colour, dash pattern and marker differ per branch, so overlapping curves
# stay distinguishable (a dashed line over a solid one shows both).
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
_DASHES = ["", "7 4", "2 3", "9 3 2 3"]
_MARKS = (1, 5, 10, 20, 30, 40, 50)  # ranks that get a marker with a tooltip


def _cmc_floor(results: Mapping[str, Mapping]) -> int:
    """The y axis's lower end (%): a step of 10 below the lowest curve's Rank-1."""
    lowest = min(100 * float(np.asarray(r["cmc"], dtype=float)[0]) for r in results.values())
    return int(max(0, min(90, np.floor(lowest / 10) * 10 - (10 if lowest % 10 < 3 else 0))))


def _marker(shape: int, x: float, y: float, colour: str) -> str:
    if shape == 0:
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>'
    if shape == 1:
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
    pts = f"{x:.1f},{y - 4.5:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}"
    if shape == 2:
        return f'<polygon points="{pts}" fill="{colour}"/>'
    return f'<polygon points="{pts}" fill="#fff" stroke="{colour}" stroke-width="1.5"/>'


def _cmc_svg(results: Mapping[str, Mapping], width: int = 860, height: int = 340) -> str:
    """An inline SVG line chart of each branch's CMC (rank 1 .. len(cmc)), the y axis
    from a little under the lowest Rank-1, a legend with each branch's Rank-1."""
    left, right, top, bottom = 56, 190, 15, 42
    pw, ph = width - left - right, height - top - bottom
    n = max(len(r["cmc"]) for r in results.values())
    lo = _cmc_floor(results)
    step = 5 if 100 - lo <= 50 else 10

    def xy(rank: int, value: float) -> tuple[float, float]:
        x = left + pw * ((rank - 1) / max(n - 1, 1))
        return x, top + ph * (1 - (100 * value - lo) / (100 - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="CMC curve" id="cmc" data-ymin="{lo}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for v in range(lo, 101, step):
        y = xy(1, v / 100)[1]
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{v}</text>'
        )
    ticks = [r for r in (1, *range(5, n + 1, 5)) if r <= n]
    if n - ticks[-1] >= 3:  # the last rank, unless it would crowd the tick before it
        ticks.append(n)
    for r in ticks:
        x = xy(r, 0)[0]
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#f0f0f0"/>'
            f'<text x="{x:.1f}" y="{top + ph + 16}" font-size="12" text-anchor="middle">{r}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="13" '
        'text-anchor="middle">rank</text>'
        f'<text x="16" y="{top + ph / 2}" font-size="13" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + ph / 2})">matching rate (%)</text>'
    )
    for i, (branch, res) in enumerate(results.items()):
        cmc = np.asarray(res["cmc"], dtype=float)
        colour, dash = _COLOURS[i % len(_COLOURS)], _DASHES[i % len(_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        pts = " ".join("{:.1f},{:.1f}".format(*xy(k + 1, v)) for k, v in enumerate(cmc))
        name = html.escape(branch)
        # Each later line is thinner and drawn on top: equal curves show as nested lines.
        stroke = max(1.2, 4.0 - 1.2 * i)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke:.1f}"{dash_attr} '
            f'points="{pts}" data-branch="{name}"/>'
        )
        for r in (r for r in _MARKS if r <= len(cmc)):
            x, y = xy(r, cmc[r - 1])
            parts.append(
                f"<g><title>{name}, rank {r}: {100 * cmc[r - 1]:.1f} %</title>"
                f"{_marker(i % 4, x, y, colour)}</g>"
            )
        ly = top + 16 + 20 * i
        lx = left + pw + 12
        parts.append(
            f'<line x1="{lx}" x2="{lx + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="2.5"{dash_attr}/>{_marker(i % 4, lx + 15, ly - 4, colour)}'
            f'<text x="{lx + 36}" y="{ly}" font-size="13">{name} '
            f"(R1 {100 * cmc[0]:.1f} %)</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def camera_pairs(
    qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str, device="cpu"
) -> dict[tuple[int, int], dict]:
    """mAP / Rank-1 of each query camera against each other gallery camera alone.

    Returns:
        ``{(query camera, gallery camera): {'mAP', 'rank1', 'queries'}}`` for every pair
        with at least one valid query (same-camera pairs have none by the protocol).
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    out = {}
    for qc in np.unique(q_camids):
        qi = np.flatnonzero(q_camids == qc)
        for gc in np.unique(g_camids):
            if qc == gc:
                continue
            gi = np.flatnonzero(g_camids == gc)
            if not np.isin(q_pids[qi], g_pids[gi]).any():
                continue
            res = evaluate(
                qf[torch.from_numpy(qi)], gf[torch.from_numpy(gi)], q_pids[qi], g_pids[gi],
                q_camids[qi], g_camids[gi], metric=metric, max_rank=1, device=device,
            )  # fmt: skip
            out[(int(qc), int(gc))] = {
                "mAP": res["mAP"],
                "rank1": float(res["cmc"][0]),
                "queries": res["num_valid_queries"],
            }
    return out


def _camera_table(pairs: Mapping[tuple[int, int], Mapping], cams: Mapping[int, str]) -> str:
    """The query camera x gallery camera table; ``cams`` names each camera id as the
    file names do."""
    qcams = sorted({q for q, _ in pairs})
    gcams = sorted({g for _, g in pairs})
    rows = ['<table class="cams"><thead><tr><th class="l">query cam \\ gallery cam</th>']
    rows += [f"<th>{html.escape(cams.get(g, str(g)))}</th>" for g in gcams]
    rows.append("</tr></thead><tbody>")
    for q in qcams:
        rows.append(f'<tr><td class="l">{html.escape(cams.get(q, str(q)))}</td>')
        for g in gcams:
            cell = pairs.get((q, g))
            if cell is None:
                rows.append("<td>-</td>")
                continue
            shade = int(255 - 120 * cell["mAP"])
            rows.append(
                f'<td style="background:rgb({shade},255,{shade})" '
                f'title="{cell["queries"]} queries">{_pct(cell["mAP"])} / '
                f"{_pct(cell['rank1'])}</td>"
            )
        rows.append("</tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def evaluation_settings(
    evaluation: ReidEvaluation, settings: Mapping | None = None
) -> dict[str, object]:
    """The ``test`` settings this evaluation ran with: distance, re-ranking, ranks,
    whether every branch was evaluated, that a report was asked for; ``settings`` (the
    invocation's own values, e.g. ``per_branch``) override what is read off the result."""
    out: dict[str, object] = {
        "metric": evaluation.metric,
        "rerank": evaluation.rerank,
        "ranks": list(evaluation.ranks),
        "per_branch": tuple(evaluation.branches) != (MAIN,),
        "report": True,
    }
    out.update(settings or {})
    return out


def report_config(config: Mapping, test: Mapping) -> dict:
    """``config`` with its ``test`` section updated by this evaluation's settings."""
    section = dict(config.get("test") or {})
    section.update(test)
    if section.get("normalize_feature") and test.get("metric") not in (None, "cosine"):
        section["normalize_feature"] = False  # it would mean cosine; this ran otherwise
    return {**config, "test": section}


def write_report(
    out: str | os.PathLike,
    evaluation: ReidEvaluation,
    *,
    title: str = "reid-dhm evaluation",
    info: Mapping[str, str] | None = None,
    config: Mapping | None = None,
    settings: Mapping | None = None,
    hardest: int = 10,
    topk: int = 10,
    single_file: bool = False,
) -> Path:
    """Write the report to ``out``: a folder (replacing an earlier report there), or
    with ``single_file`` one HTML file (``.html`` added when ``out`` lacks it).

    Args:
        evaluation: what is reported; its main branch's per-query ``AP`` picks the
            hardest queries, whose top-k use the evaluation's own distance.
        info: lines for the header (dataset, checkpoint, ...).
        config: the run's resolved config (shown as JSON, its ``test`` section replaced
            by :func:`evaluation_settings`).
        settings: the evaluation's own settings where the result does not tell them
            (``per_branch``, ...), see :func:`evaluation_settings`.
        hardest, topk: how many queries (lowest AP) and gallery images per query.
        single_file: one HTML file with the thumbnails embedded as ``data:`` URIs.

    Returns:
        The path of the HTML page. Either form is written beside ``out`` and moved
        into place when complete, so a failure never leaves a half-written report.
    """
    out = Path(out)
    test = evaluation_settings(evaluation, settings)
    if config is not None:
        config = report_config(config, test)
    if single_file:
        out = out if out.suffix.lower() in (".html", ".htm") else out.with_name(out.name + ".html")
        page = _page(_Thumbs(None), evaluation, title, info, config, test, hardest, topk)
        with atomic_path(out, needed=lambda: len(page.encode())) as tmp:
            tmp.write_text(page, encoding="utf-8")
        os.chmod(out, 0o644)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "images").mkdir()
        thumbs = _Thumbs(work / "images")
        page = _page(thumbs, evaluation, title, info, config, test, hardest, topk)
        (work / "index.html").write_text(page, encoding="utf-8")
        (work / "metrics.json").write_text(json.dumps(evaluation.table(), indent=1))
        os.chmod(work, 0o755)
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "index.html"


def _page(thumbs: _Thumbs, ev: ReidEvaluation, title, info, config, test, hardest, topk) -> str:
    """The whole HTML page; ``thumbs`` makes the thumbnails' sources."""
    metric, rerank = ev.metric, ev.rerank
    q, g = ev.query, ev.gallery
    cams = merged_camera_names(camera_names(q.paths, q.camids), camera_names(g.paths, g.camids))
    body = [f"<h1>{html.escape(title)}</h1>"]
    meta = dict(info or {})
    meta.setdefault("written", time.strftime("%Y-%m-%d %H:%M:%S"))
    meta.setdefault("distance", f"{metric}{', k-reciprocal re-ranking' if rerank else ''}")
    meta.setdefault("branches", ", ".join(ev.branches))
    meta.setdefault(
        "evaluation",
        ", ".join(f"{k} {json.dumps(v).strip(chr(34))}" for k, v in test.items()),
    )
    body.append(
        '<p class="meta">'
        + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in meta.items())
        + "</p>"
    )
    body.append(_metrics_section(ev.table(), ev.ranks))
    body.append("<h2>CMC curve</h2>" + _cmc_svg(ev.raw))
    body.append(_hardest_section(thumbs, ev, cams, hardest, topk))
    pairs = camera_pairs(q.features, g.features, q.pids, g.pids, q.camids, g.camids, metric)
    body.append(
        "<h2>Per camera pair (main branch, mAP / Rank-1 %)</h2>"
        '<p class="meta">Each query camera against the gallery images of one other camera '
        f"alone ({metric} distance{', without re-ranking' if rerank else ''}); cameras "
        "numbered as in the file names.</p>"
        + (_camera_table(pairs, cams) if pairs else "<p>no camera pair has a valid query</p>")
    )
    if config is not None:
        text = json.dumps(config, indent=1, default=str)
        body.append(
            '<h2>Config</h2><p class="meta">The run\'s config; its <code>test</code> section '
            f'holds this evaluation\'s own settings.</p><pre id="config">{html.escape(text)}</pre>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + f"<script>{_JS}</script></body></html>\n"
    )


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``; an earlier one goes only after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _metrics_section(table: Mapping[str, Mapping], ranks: Sequence[int]) -> str:
    head = "".join(f"<th>R{r}</th>" for r in ranks)
    rows = [
        "<h2>Metrics (%)</h2>",
        '<table class="sortable" id="metrics"><thead><tr><th class="l">branch</th><th>mAP</th>'
        f"<th>mINP</th>{head}<th>valid queries</th></tr></thead><tbody>",
    ]
    for branch, row in table.items():
        cells = [("mAP", row["mAP"]), ("mINP", row["mINP"])]
        cells += [(f"rank{r}", row[f"rank{r}"]) for r in ranks]
        tds = "".join(
            f'<td data-metric="{k}" data-branch="{html.escape(branch)}" data-v="{100 * v:.4f}">'
            f"{_pct(v)}</td>"
            for k, v in cells
        )
        rows.append(
            f'<tr><td class="l">{html.escape(branch)}</td>{tds}'
            f"<td>{row['num_valid_queries']}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _hardest_section(
    thumbs: _Thumbs, ev: ReidEvaluation, cams: Mapping[int, str], hardest: int, topk: int
) -> str:
    """The lowest-AP queries of the main branch with their top-k gallery images."""
    res = ev.raw[MAIN]
    q, g = ev.query, ev.gallery
    ap = np.asarray(res["AP"], dtype=float)
    valid = np.flatnonzero(np.asarray(res["valid"]))
    picks = valid[np.argsort(ap[valid], kind="stable")[: max(0, hardest)]]
    if picks.size == 0:
        return "<h2>Hardest queries</h2><p>none</p>"
    # Unlike the ranked PNG, junk stays in the list: the report marks it as ignored, and
    # the rank of a first true match beyond the top-k counts in the same list.
    k = min(topk, len(g))
    dist = ev.distances(picks)
    order = dist.topk(k, dim=1, largest=False).indices.numpy()
    true = (g.pids[None, :] == q.pids[picks, None]) & (g.camids[None, :] != q.camids[picks, None])
    first = first_true_ranks(dist, true)
    parts = [
        f"<h2>Hardest queries (lowest AP, main branch, top {k})</h2>",
        '<p class="legend"><span style="color:#1a9e1a">&#9632; true match</span>'
        '<span style="color:#d62020">&#9632; false match</span>'
        '<span style="color:#999">&#9632; junk (same identity and camera: ignored)</span>'
        "<span>hover an image for its file name</span></p>",
    ]
    for i, qi in enumerate(picks):
        qname = Path(q.paths[qi]).name
        src = thumbs.src(q.paths[qi], f"q{i}.jpg")
        miss = ""
        if first[i] is not None and first[i] > k:
            miss = f'<br><span class="miss">1st true match<br>at rank {first[i]}</span>'
        cells = [
            f'<div class="t query" title="{html.escape(qname)}"><img src="{src}" '
            f'alt="{html.escape(qname)}">query<br>id {q.pids[qi]} '
            f"{html.escape(cams[int(q.camids[qi])])}<br>AP {100 * ap[qi]:.1f} %{miss}</div>"
        ]
        for j, gi in enumerate(order[i]):
            same = g.pids[gi] == q.pids[qi]
            kind = ("junk" if g.camids[gi] == q.camids[qi] else "true") if same else "false"
            gname = html.escape(Path(g.paths[gi]).name)
            src = thumbs.src(g.paths[gi], f"q{i}_g{j}.jpg")
            cells.append(
                f'<div class="t {kind}" data-kind="{kind}" title="{gname}"><img src="{src}" '
                f'alt="{gname}">{j + 1}: {kind}<br>id {g.pids[gi]} '
                f"{html.escape(cams[int(g.camids[gi])])}</div>"
            )
        parts.append(f'<div class="q" data-query="{html.escape(qname)}">')
        parts += cells
        parts.append("</div>")
    return "".join(parts)


__all__ = ["camera_pairs", "evaluation_settings", "report_config", "write_report"]
