"""Which differences are real: per-variant summaries and paired confidence intervals.

Trials of two variants with the same seed share everything a seed decides (the
initial weights when the branches are the same, the data order, the augmentation), so
the variants are compared on the per-seed differences: a paired t interval over the
seeds both have. An interval that holds 0 is "no difference".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# The metrics a study reports per task, the deciding one first; all in percent.
METRICS = {"reid": ("mAP", "rank1", "mINP"), "classification": ("top1_err", "top5_err")}
LOWER_IS_BETTER = frozenset({"top1_err", "top5_err"})
LEVEL = 0.95
VERDICTS = ("better", "worse", "no difference", "too few seeds")


def primary_metric(task: str) -> str:
    """The metric that decides a setting of ``task`` (mAP; top-1 error)."""
    return METRICS[task][0]


def describe(values: Iterable[float]) -> dict:
    """``{n, mean, std}`` of ``values`` (sample std, ddof 1; 0 for one value; NaN for none)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan}
    mean = math.fsum(vals) / n
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": math.sqrt(var)}


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def paired(
    values: Mapping[int, float], reference: Mapping[int, float], level: float = LEVEL
) -> dict:
    """The paired difference ``values - reference`` over the seeds both have.

    Args:
        values, reference: seed -> metric.

    Returns:
        ``{n, seeds, mean, std, low, high}``: the mean difference and its two-sided
        ``level`` paired-t interval (``low``/``high`` None below two pairs).
    """
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    out = {**describe(diffs), "seeds": seeds, "low": None, "high": None}
    if len(diffs) >= 2:
        half = t_quantile(0.5 + level / 2, len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def gain_interval(diff: Mapping, metric: str) -> tuple[float, float] | None:
    """The interval of the improvement (difference for higher-is-better metrics, its
    negative for errors), or None without an interval."""
    if diff["low"] is None:
        return None
    if metric in LOWER_IS_BETTER:
        return -diff["high"], -diff["low"]
    return diff["low"], diff["high"]


def verdict(diff: Mapping, metric: str) -> str:
    """``better`` (the improvement's interval is above 0), ``worse`` (below 0),
    ``no difference`` (it holds 0) or ``too few seeds`` (fewer than two pairs)."""
    gain = gain_interval(diff, metric)
    if gain is None:
        return "too few seeds"
    if gain[0] > 0:
        return "better"
    if gain[1] < 0:
        return "worse"
    return "no difference"


def by_seed(rows: Sequence[Mapping], metric: str) -> dict[int, float]:
    """seed -> ``metric`` of the finished rows that have it."""
    return {
        int(r["seed"]): float(r["metrics"][metric])
        for r in rows
        if r.get("status") == "ok" and metric in (r.get("metrics") or {})
    }


def decide(
    table: Mapping[str, Mapping[str, Mapping[int, float]]],
    tasks: Mapping[str, str],
    candidate: str,
    against: Sequence[str],
    margin: Mapping[str, float],
    seeds: Sequence[int] | None = None,
) -> dict:
    """The default-changing rule of a study (issue 17).

    The candidate passes if, on each setting's deciding metric, it is ``better`` than
    every one of ``against`` in at least one setting, and in every setting the lower
    bound of its improvement over each of them is above ``-margin[task]``.

    A setting is *complete* when the candidate and each of ``against`` have every one
    of the planned ``seeds``. The outcome is *final* (no unfinished trial can change
    it) once every setting is complete, or once a complete setting breaks the margin:
    the rule needs every setting within it, so a long study can stop early.

    Args:
        table: setting -> variant -> seed -> deciding metric.
        tasks: setting -> task.
        seeds: the seeds the study plans (None: every setting counts as complete).

    Returns:
        ``{passed, final, better_somewhere, within_margin, complete: [setting, ...],
        broken: [complete settings outside the margin], settings: {setting: {other:
        {...}}}, reasons: [one line each]}``.
    """
    settings, reasons, complete = {}, [], []
    better_somewhere, within, broken = False, True, []
    for setting, variants in table.items():
        metric, task = primary_metric(tasks[setting]), tasks[setting]
        if candidate not in variants or any(o not in variants for o in against):
            reasons.append(f"{setting}: not every variant of the rule has finished trials")
            within = False
            continue
        done = seeds is None or all(set(seeds) <= set(variants[v]) for v in (candidate, *against))
        if done:
            complete.append(setting)
        row, all_better = {}, True
        for other in against:
            diff = paired(variants[candidate], variants[other])
            gain = gain_interval(diff, metric)
            row[other] = {**diff, "verdict": verdict(diff, metric)}
            all_better &= row[other]["verdict"] == "better"
            if gain is None or gain[0] <= -margin[task]:
                within = False
                if done and setting not in broken:
                    broken.append(setting)
                low = "none" if gain is None else f"{gain[0]:+.2f}"
                reasons.append(
                    f"{setting}: the lower bound of {candidate}'s {metric} improvement over "
                    f"{other} is {low}, not above -{margin[task]:g}"
                )
        better_somewhere |= all_better
        settings[setting] = row
    if not better_somewhere:
        reasons.append(f"{candidate} is not better than all of {list(against)} in any setting")
    return {
        "candidate": candidate,
        "against": list(against),
        "passed": better_somewhere and within,
        "final": bool(broken) or len(complete) == len(table),
        "complete": complete,
        "broken": broken,
        "better_somewhere": better_somewhere,
        "within_margin": within,
        "settings": settings,
        "reasons": reasons,
    }


__all__ = [
    "LEVEL",
    "LOWER_IS_BETTER",
    "METRICS",
    "VERDICTS",
    "by_seed",
    "decide",
    "describe",
    "gain_interval",
    "paired",
    "primary_metric",
    "verdict",
]
