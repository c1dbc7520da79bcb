"""From a ``study.json`` to the numbers its tables show: per setting x variant
summaries, paired differences to the references, and the rule's decision."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .stats import METRICS, by_seed, decide, describe, paired, primary_metric, verdict


def summarize(data: Mapping) -> dict:
    """``{settings: {setting: {...}}, decision: {...} or None, counts: {...}}``.

    Per setting: ``task``, ``metrics`` (deciding first), ``variants`` (variant ->
    ``n``, ``seeds``, ``metrics`` (metric -> mean/std/n), ``per_seed`` (seed -> deciding
    metric), ``train_acc``, ``seconds`` (training time), ``monitor`` (branch pair -> mean
    gradient cosine on the shared stem), ``failed`` (one-line errors)), ``diffs``
    (variant -> reference -> metric -> paired difference with its ``verdict``) and
    ``trial_seconds`` (the finished trials' training times, summed).
    """
    spec, rows = data["spec"], data["trials"]
    tasks = known_tasks(data["tasks"], rows, list(spec["settings"]))
    settings = {}
    for setting, task in tasks.items():
        metrics = METRICS[task]
        mine = [r for r in rows if r["setting"] == setting]
        variants = {}
        order = [v for v in spec["variants"] if any(r["variant"] == v for r in mine)]
        for variant in order:
            vrows = sorted((r for r in mine if r["variant"] == variant), key=lambda r: r["seed"])
            ok = [r for r in vrows if r["status"] == "ok"]
            variants[variant] = {
                "n": len(ok),
                "seeds": [r["seed"] for r in ok],
                "metrics": {m: describe(r["metrics"][m] for r in ok) for m in metrics},
                "per_seed": by_seed(ok, metrics[0]),
                "train_acc": describe(r["train_acc"] for r in ok),
                "seconds": describe(_train_seconds(r) for r in ok),
                "monitor": _monitor(ok),
                "failed": [f"seed {r['seed']}: {r.get('error', '')}" for r in vrows
                           if r["status"] != "ok"],
            }  # fmt: skip
        diffs = {}
        for variant in variants:
            for ref in spec["reference"]:
                if ref == variant or ref not in variants:
                    continue
                per_metric = {}
                for m in metrics:
                    d = paired(_seeds(mine, variant, m), _seeds(mine, ref, m))
                    per_metric[m] = {**d, "verdict": verdict(d, m)}
                diffs.setdefault(variant, {})[ref] = per_metric
        settings[setting] = {
            "task": task,
            "metrics": list(metrics),
            "variants": variants,
            "diffs": diffs,
            # each finished trial's own wall time, summed (trials may have run side by side)
            "trial_seconds": sum(_train_seconds(r) for r in mine if r["status"] == "ok"),
        }
    counts = {**_counts(rows), "planned": _planned(spec)}
    decision = _decision(data, settings, tasks)
    return {"settings": settings, "decision": decision, "counts": counts}


def _planned(spec: Mapping) -> int:
    """How many trials the study file asks for (settings x their variants x seeds)."""
    per_setting = (len(s.get("variants") or spec["variants"]) for s in spec["settings"].values())
    return sum(per_setting) * len(spec["seeds"])


def _train_seconds(row: Mapping) -> float:
    """A trial's training time: the sum of its epochs' times, which a resumed trial
    carries over from its checkpoint (its own wall time counts only the last attempt)."""
    return row.get("train_seconds", row["seconds"])


def _seeds(rows, variant: str, metric: str) -> dict[int, float]:
    return by_seed([r for r in rows if r["variant"] == variant], metric)


def _decision(data: Mapping, settings: Mapping, tasks: Mapping[str, str]) -> dict | None:
    rule = data["spec"].get("rule")
    if not rule:
        return None
    table = {}
    for setting, s in settings.items():
        rows = [r for r in data["trials"] if r["setting"] == setting]
        metric = primary_metric(s["task"])
        table[setting] = {v: _seeds(rows, v, metric) for v in s["variants"]}
    return decide(
        table, tasks, rule["candidate"], rule["against"], rule["margin"],
        seeds=data["spec"]["seeds"],
    )  # fmt: skip


def _monitor(rows) -> dict:
    """Gradient-monitor pair -> mean/std over trials of each run's mean cosine on the shared
    stem (``grad/cos/main~aux1`` ...; trials without a monitor give nothing)."""
    keys = sorted({k for r in rows for k in r.get("monitor") or {}})
    return {
        k.removeprefix("grad/cos/"): describe(r["monitor"][k] for r in rows
                                              if k in (r.get("monitor") or {}))
        for k in keys
    }  # fmt: skip


def known_tasks(
    tasks: Mapping[str, str], rows: Iterable[Mapping], settings: Sequence[str]
) -> dict[str, str]:
    """Setting -> task for every setting of the study file that this run resolved or that
    has trials on record, in the file's order. A run of some settings (``--settings``)
    must not drop the others from ``study.json``'s reports."""
    known = {r["setting"]: r["task"] for r in rows if r.get("task")}
    known.update(tasks)
    return {s: known[s] for s in settings if s in known}


def _counts(rows) -> dict:
    return {
        "trials": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
    }


__all__ = ["known_tasks", "summarize"]
