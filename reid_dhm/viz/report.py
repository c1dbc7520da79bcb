"""A self-contained HTML evaluation report: metrics, CMC, hardest queries, camera pairs.

``write_report`` turns a :class:`~reid_dhm.retrieval.result.ReidEvaluation`
(features, labels, image paths and the ``evaluate`` result of every branch) into one
folder that opens offline in any browser: ``index.html`` (inline CSS, an inline SVG CMC
curve, a few lines of JavaScript to sort tables) and ``images/`` with small JPEG copies
of the query and gallery images shown. Nothing links back to the data folder, so the report can be
zipped, mailed or published as it is.

Contents: the metrics table (every evaluated branch), the CMC curve, mAP / mINP,
the hardest queries (lowest AP) with their top-k gallery images marked true (same
identity, other camera), false, or junk (same identity, same camera: ignored by the
protocol), a per-camera-pair breakdown (mAP and Rank-1 of each query camera against
each other gallery camera alone), and the run's config and checkpoint name.
"""

from __future__ import annotations

import html
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

THUMB = (128, 64)  # (H, W) of the copied thumbnails

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3;cursor:pointer}td.l,th.l{text-align:left}
.q{display:flex;align-items:flex-start;gap:6px;margin:10px 0}.t{text-align:center;
font-size:11px}.t img{display:block;border:3px solid #888}.true img{border-color:#1a9e1a}
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


def _thumb(src: str, dest: Path) -> None:
    # The evaluation read these files under the run's own pixel limit.
    img = read_image(src, NO_PIXEL_LIMIT, warn_large=False)
    img.resize(THUMB[::-1], Image.BILINEAR).save(dest, "JPEG", quality=88)


def _cmc_svg(results: Mapping[str, Mapping], width: int = 520, height: int = 300) -> str:
    """An inline SVG line chart of each branch's CMC (rank 1 .. len(cmc))."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    left, right, top, bottom = 50, 110, 15, 40
    pw, ph = width - left - right, height - top - bottom
    n = max(len(r["cmc"]) for r in results.values())
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="CMC curve">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for v in range(0, 101, 20):
        y = top + ph * (1 - v / 100)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v}</text>'
        )
    for r in sorted({1, 5, 10, 20, 30, 40, 50, n} & set(range(1, n + 1))):
        x = left + pw * ((r - 1) / max(n - 1, 1))
        parts.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">{r}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 5}" font-size="12" '
        'text-anchor="middle">rank</text>'
    )
    parts.append(
        f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">matching rate (%)</text>'
    )
    for i, (branch, res) in enumerate(results.items()):
        cmc = np.asarray(res["cmc"], dtype=float)
        pts = " ".join(
            f"{left + pw * (k / max(n - 1, 1)):.1f},{top + ph * (1 - v):.1f}"
            for k, v in enumerate(cmc)
        )
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        y = top + 14 + 16 * i
        parts.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 30}" y1="{y - 4}" y2="{y - 4}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        parts.append(
            f'<text x="{left + pw + 34}" y="{y}" font-size="12">{html.escape(branch)}</text>'
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


def _camera_table(pairs: Mapping[tuple[int, int], Mapping]) -> str:
    qcams = sorted({q for q, _ in pairs})
    gcams = sorted({g for _, g in pairs})
    rows = ['<table class="cams"><thead><tr><th class="l">query cam \\ gallery cam</th>']
    rows += [f"<th>c{g}</th>" for g in gcams]
    rows.append("</tr></thead><tbody>")
    for q in qcams:
        rows.append(f'<tr><td class="l">c{q}</td>')
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


def write_report(
    out_dir: str | os.PathLike,
    evaluation: ReidEvaluation,
    *,
    title: str = "reid-dhm evaluation",
    info: Mapping[str, str] | None = None,
    config: Mapping | None = None,
    hardest: int = 10,
    topk: int = 10,
) -> Path:
    """Write the report folder ``out_dir`` (replacing an earlier report there).

    Args:
        evaluation: what is reported; its main branch's per-query ``AP`` picks the
            hardest queries, whose top-k use the evaluation's own distance.
        info: lines for the header (dataset, checkpoint, ...).
        config: the run's resolved config (shown as JSON).
        hardest, topk: how many queries (lowest AP) and gallery images per query.

    Returns:
        The path of ``index.html``. The folder is written beside ``out_dir`` and moved
        into place when complete, so a failure never leaves a half-written report.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (work / "images").mkdir()
        page = _page(work, evaluation, title, info, config, hardest, topk)
        (work / "index.html").write_text(page, encoding="utf-8")
        (work / "metrics.json").write_text(json.dumps(evaluation.table(), indent=1))
        os.chmod(work, 0o755)
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir / "index.html"


def _page(work: Path, ev: ReidEvaluation, title, info, config, hardest, topk) -> str:
    """The whole ``index.html`` text; thumbnails are written into ``work/images``."""
    metric, rerank = ev.metric, ev.rerank
    q, g = ev.query, ev.gallery
    body = [f"<h1>{html.escape(title)}</h1>"]
    meta = dict(info or {})
    meta.setdefault("written", time.strftime("%Y-%m-%d %H:%M:%S"))
    meta.setdefault("distance", f"{metric}{', k-reciprocal re-ranking' if rerank else ''}")
    body.append(
        '<p class="meta">'
        + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}" for k, v in meta.items())
        + "</p>"
    )
    body.append(_metrics_section(ev.table(), ev.ranks))
    body.append("<h2>CMC curve</h2>" + _cmc_svg(ev.raw))
    body.append(_hardest_section(work, ev, hardest, topk))
    pairs = camera_pairs(q.features, g.features, q.pids, g.pids, q.camids, g.camids, metric)
    body.append(
        "<h2>Per camera pair (main branch, mAP / Rank-1 %)</h2>"
        '<p class="meta">Each query camera against the gallery images of one other camera '
        f"alone ({metric} distance{', without re-ranking' if rerank else ''}).</p>"
        + (_camera_table(pairs) if pairs else "<p>no camera pair has a valid query</p>")
    )
    if config is not None:
        text = json.dumps(config, indent=1, default=str)
        body.append(f'<h2>Config</h2><pre id="config">{html.escape(text)}</pre>')
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


def _hardest_section(work: Path, ev: ReidEvaluation, hardest: int, topk: int) -> str:
    """The lowest-AP queries of the main branch with their top-k gallery images."""
    res = ev.raw[MAIN]
    q, g = ev.query, ev.gallery
    q_pids, g_pids, q_camids, g_camids = q.pids, g.pids, q.camids, g.camids
    ap = np.asarray(res["AP"], dtype=float)
    valid = np.flatnonzero(np.asarray(res["valid"]))
    picks = valid[np.argsort(ap[valid], kind="stable")[: max(0, hardest)]]
    if picks.size == 0:
        return "<h2>Hardest queries</h2><p>none</p>"
    # Unlike the ranked PNG, junk stays in the list: the report marks it as ignored.
    k = min(topk, len(g))
    order = ev.distances(picks).topk(k, dim=1, largest=False).indices.numpy()
    parts = [
        f"<h2>Hardest queries (lowest AP, main branch, top {k})</h2>",
        '<p class="legend"><span style="color:#1a9e1a">&#9632; true match</span>'
        '<span style="color:#d62020">&#9632; false match</span>'
        '<span style="color:#999">&#9632; junk (same identity and camera: ignored)</span></p>',
    ]
    for i, qi in enumerate(picks):
        _thumb(q.paths[qi], work / "images" / f"q{i}.jpg")
        cells = [
            f'<div class="t query"><img src="images/q{i}.jpg" alt="query {i}">'
            f"query<br>id {q_pids[qi]} c{q_camids[qi]}<br>AP {_pct(ap[qi])}</div>"
        ]
        for j, gi in enumerate(order[i]):
            same = g_pids[gi] == q_pids[qi]
            kind = ("junk" if g_camids[gi] == q_camids[qi] else "true") if same else "false"
            name = f"q{i}_g{j}.jpg"
            _thumb(g.paths[gi], work / "images" / name)
            cells.append(
                f'<div class="t {kind}" data-kind="{kind}"><img src="images/{name}" '
                f'alt="rank {j + 1}">{j + 1}: {kind}<br>id {g_pids[gi]} c{g_camids[gi]}</div>'
            )
        parts.append(f'<div class="q" data-query="{html.escape(Path(q.paths[qi]).name)}">')
        parts += cells
        parts.append("</div>")
    return "".join(parts)


__all__ = ["camera_pairs", "write_report"]
