"""A study's tables and pictures: ``study.md`` (GitHub tables) and ``study.html`` (one
self-contained file: a strip plot per metric with every seed a dot, and the mean
training curves per variant)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

NAMES = {"mAP": "mAP", "rank1": "Rank-1", "mINP": "mINP", "top1_err": "top-1 error",
         "top5_err": "top-5 error"}  # fmt: skip
CURVES = (("acc/main", "training accuracy, main branch (%)"), ("loss", "training loss"))


def _pm(d: Mapping, digits: int = 1) -> str:
    if not d or not d.get("n") or math.isnan(d["mean"]):
        return "-"
    return f"{d['mean']:.{digits}f} +- {d['std']:.{digits}f}"


def _interval(d: Mapping) -> str:
    if d["low"] is None:
        return f"{d['mean']:+.2f} (n={d['n']})" if d["n"] else "-"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub table: header, separator row, body."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def study_markdown(data: Mapping, summary: Mapping) -> str:
    """The whole ``study.md``: description, per-setting results and differences, the
    rule's decision, failed trials, the conclusion."""
    command = f"reid-dhm study {data['study_file']}"
    spec, counts = data["spec"], summary["counts"]
    lines = [f"# Study: {data['name']}", ""]
    if spec.get("description"):
        lines += [spec["description"].strip(), ""]
    lines += [
        f"Generated from `study.json` ({counts['ok']} of {counts['planned']} trials finished"
        + (f", {counts['failed']} failed" if counts["failed"] else "")
        + f") by `{command}`.",
        "Metrics of the deployed main branch in %, mean +- std over seeds. Differences are "
        "paired by seed (variant minus reference) with a 95 % paired-t interval over the "
        "seeds both have; an interval that holds 0 is \"no difference\" (for errors, lower "
        "is better).",
        "",
    ]  # fmt: skip
    for setting, s in summary["settings"].items():
        lines += _setting_markdown(setting, s, spec)
    if summary.get("decision"):
        lines += _decision_markdown(summary["decision"])
    if spec.get("conclusion"):
        lines += [spec["conclusion"].strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _setting_markdown(setting: str, s: Mapping, spec: Mapping) -> list[str]:
    metrics, first = s["metrics"], s["metrics"][0]
    sspec = spec["settings"][setting]
    what = f"`--dataset {sspec.get('dataset')}`" if sspec.get("dataset") else ""
    if sspec.get("config"):
        what += f" `--config {sspec['config']}`"
    if sspec.get("overrides"):
        what += " " + " ".join(f"`{o}`" for o in sspec["overrides"])
    if sspec.get("vars"):
        what += "; in the variants " + ", ".join(
            f"`{{{k}}}` = {v}" for k, v in sspec["vars"].items()
        )
    lines = [f"## {setting}", "", f"{s['task']}: {what.strip()}", ""]
    head = ["variant", "seeds", *(NAMES[m] for m in metrics), f"{NAMES[first]} per seed",
            "train acc (%)", "train time (s)"]  # fmt: skip
    rows = []
    for variant, v in s["variants"].items():
        per_seed = ", ".join(f"{v['per_seed'][k]:.1f}" for k in sorted(v["per_seed"]))
        rows.append([
            f"`{variant}`", v["n"], *(_pm(v["metrics"][m]) for m in metrics), per_seed or "-",
            _pm(v["train_acc"]), f"{v['seconds']['mean']:.0f}" if v["n"] else "-",
        ])  # fmt: skip
    lines += table(head, rows) + [""]
    done = sum(v["n"] for v in s["variants"].values())
    lines += [
        f"Training time: {s['trial_seconds'] / 3600:.1f} h over {done} finished trials "
        "(each trial's epochs, summed; trials that ran side by side overlap).",
        "",
    ]
    lines += _monitor_markdown(s["variants"])
    variant_list = ", ".join(
        f"`{name}`: {' '.join(spec['variants'][name]) or '(the setting as it is)'}"
        for name in s["variants"]
    )
    lines += [f"Variants: {variant_list}.", ""]
    if s["diffs"]:
        head = ["variant", "vs", "pairs", *(f"{NAMES[m]} difference [95 % CI]" for m in metrics),
                "verdict"]  # fmt: skip
        rows = []
        for variant, refs in s["diffs"].items():
            for ref, per_metric in refs.items():
                rows.append([
                    f"`{variant}`", f"`{ref}`", per_metric[first]["n"],
                    *(_interval(per_metric[m]) for m in metrics),
                    f"**{per_metric[first]['verdict']}**",
                ])  # fmt: skip
        lines += [f"Paired differences (verdict on {NAMES[first]}):", ""]
        lines += table(head, rows) + [""]
    failed = [(variant, e) for variant, v in s["variants"].items() for e in v["failed"]]
    if failed:
        lines += ["Failed trials:", ""] + [f"- `{v}` {e}" for v, e in failed] + [""]
    return lines


def _monitor_markdown(variants: Mapping) -> list[str]:
    pairs = sorted(
        {p for v in variants.values() for p in v.get("monitor") or {}},
        key=lambda p: ("aux" in p.split("~")[0], p),
    )  # main's pairs first
    if not pairs:
        return []
    rows = [[f"`{name}`", *(_pm((v.get("monitor") or {}).get(p, {}), 3) for p in pairs)]
            for name, v in variants.items() if v.get("monitor")]  # fmt: skip
    return [
        "Gradient agreement (the training-time monitor, paper 3.3: cosine between the "
        "gradients two branches' losses send into the stages they share; each run's mean "
        "over its samples, then mean +- std over seeds):",
        "",
        *table(["variant", *pairs], rows),
        "",
    ]


def _finality(decision: Mapping) -> str:
    complete = ", ".join(decision["complete"]) or "none"
    if decision["broken"]:
        return (
            f"Final: {', '.join(decision['broken'])} "
            f"{'has' if len(decision['broken']) == 1 else 'have'} every planned seed and "
            f"{'breaks' if len(decision['broken']) == 1 else 'break'} the margin, so no "
            "unfinished trial can make the rule pass."
        )
    if decision["final"]:
        return f"Final: every setting has every planned seed ({complete})."
    return (
        f"Provisional: settings with every planned seed: {complete}; the unfinished trials "
        "can still change the outcome."
    )


def _decision_markdown(decision: Mapping) -> list[str]:
    cand, against = decision["candidate"], decision["against"]
    lines = ["## Decision", ""]
    word = "passes" if decision["passed"] else "does not pass"
    lines += [
        f"Candidate `{cand}` against {', '.join(f'`{a}`' for a in against)}: the rule "
        f"{word} (better than all of them in at least one setting: "
        f"{'yes' if decision['better_somewhere'] else 'no'}; improvement's lower bound "
        f"above the margin in every setting: {'yes' if decision['within_margin'] else 'no'}).",
        "",
    ]
    lines += [_finality(decision), ""]
    rows = []
    for setting, per in decision["settings"].items():
        for other, d in per.items():
            rows.append([setting, f"`{other}`", d["n"], _interval(d), d["verdict"]])
    if rows:
        lines += table(["setting", "vs", "pairs", "difference [95 % CI]", "verdict"], rows)
        lines.append("")
    lines += [f"- {r}" for r in decision["reasons"]] + [""]
    return lines


# ------------------------------------------------------------------------- HTML
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _strip_figure(setting: str, s: Mapping, rows: Sequence[Mapping]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, variants = s["metrics"], list(s["variants"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, variant in enumerate(variants):
            vals = [r["metrics"][m] for r in rows
                    if r["variant"] == variant and r["status"] == "ok"]  # fmt: skip
            if not vals:
                continue
            offsets = [(j - (len(vals) - 1) / 2) * 0.08 for j in range(len(vals))]
            ax.scatter([i + o for o in offsets], vals, s=22, alpha=0.8, zorder=3)
            mean = sum(vals) / len(vals)
            ax.hlines(mean, i - 0.3, i + 0.3, colors="black", linewidth=1.5, zorder=4)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        ax.set_title(f"{setting}: {NAMES[m]} (%)" + (", lower is better" if "err" in m else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _curve_figure(setting: str, s: Mapping, rows: Sequence[Mapping]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5.2 * len(CURVES), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], CURVES):
        for variant in s["variants"]:
            series = [r["curves"][key] for r in rows if r["variant"] == variant
                      and r["status"] == "ok" and key in r.get("curves", {})]  # fmt: skip
            if not series:
                continue
            length = min(len(x) for x in series)
            mean = [sum(x[e] for x in series) / len(series) for e in range(length)]
            ax.plot(range(1, length + 1), mean, label=f"{variant} (n={len(series)})")
        ax.set_title(f"{setting}: {title}, mean over seeds")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def study_html(data: Mapping, summary: Mapping, markdown: str) -> str:
    """One self-contained page: the tables (as preformatted markdown) and the figures."""
    import matplotlib.pyplot as plt

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Study: {html.escape(data['name'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}pre{white-space:pre-wrap;background:#f6f8fa;padding:1em;"
        "font-size:13px}</style></head><body>",
        f"<h1>Study: {html.escape(data['name'])}</h1>",
    ]
    for setting, s in summary["settings"].items():
        rows = [r for r in data["trials"] if r["setting"] == setting]
        parts.append(f"<h2 id='{html.escape(setting)}'>{html.escape(setting)}</h2>")
        for kind, make in (("strip", _strip_figure), ("curves", _curve_figure)):
            fig = make(setting, s, rows)
            alt = f"{setting}: {'every seed per variant' if kind == 'strip' else 'mean curves'}"
            parts.append(
                f"<img class='{kind}' alt='{html.escape(alt)}' "
                f"src='data:image/png;base64,{_png(fig)}'>"
            )
            plt.close(fig)
    parts.append("<h2>Tables</h2><pre>" + html.escape(markdown) + "</pre></body></html>")
    return "\n".join(parts)


__all__ = ["study_html", "study_markdown", "table"]
