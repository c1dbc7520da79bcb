"""Console tables: evaluation results (what runs and ``reid-dhm test`` print) and model
costs (``reid-dhm summary``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..retrieval.result import ReidEvaluation


def format_reid(evaluation: ReidEvaluation) -> str:
    """mAP, mINP and Rank-k (percent) of every evaluated branch, one row each."""
    ranks = evaluation.ranks
    table = evaluation.table()
    head = f"{'branch':<8}{'mAP':>7}{'mINP':>7}" + "".join(f"{'R' + str(r):>7}" for r in ranks)
    lines = [
        f"** {evaluation.dataset}: {evaluation.metric} distance"
        f"{', re-ranked' if evaluation.rerank else ''}, "
        f"{evaluation.main['num_valid_queries']} valid queries **",
        head,
    ]
    for branch, row in table.items():
        cells = [row["mAP"], row["mINP"], *(row[f"rank{r}"] for r in ranks)]
        lines.append(f"{branch:<8}" + "".join(f"{100 * v:>7.1f}" for v in cells))
    return "\n".join(lines)


def format_classification(table: Mapping[str, Mapping]) -> str:
    """Top-1 / top-5 error per branch as a small text table.

    Args:
        table: ``{branch: {'top1_err', 'top5_err' (percent), 'num_images'}}``, main first.
    """
    n = next(iter(table.values()))["num_images"]
    lines = [f"** test set: {n} images **", f"{'branch':<8}{'top1 err':>10}{'top5 err':>10}"]
    for b, row in table.items():
        lines.append(f"{b:<8}{row['top1_err']:>10.2f}{row['top5_err']:>10.2f}")
    return "\n".join(lines)


__all__ = ["format_classification", "format_reid"]


# The cost table's width (label 24 + params 12 + GFLOPs 10).
COST_WIDTH = 46
# branch_costs rows that are totals, not branches.
_COST_TOTALS = ("classifiers", "train", "deploy")


def _cost_line(label: str, cost: Mapping) -> str:
    return f"{label:<24}{cost['params'] / 1e6:>12.2f}{cost['flops'] / 1e9:>10.3f}"


def format_costs(name: str, size: tuple[int, int], rows: Mapping, num_classes: int) -> str:
    """The ``reid-dhm summary`` table of ``models.complexity.branch_costs`` rows."""
    heads = len(rows) - len(_COST_TOTALS)  # every other row is a branch with a classifier
    rule = "-" * COST_WIDTH
    lines = [
        f"{name} @ {size[0]}x{size[1]}, {num_classes} classes "
        "(forward, one image; FLOPs = 2 x multiply-adds)",
        "Each branch row counts the layers that compute its embedding (stages and pooling);\n"
        "the classifiers, used only in training, are counted on their own row at the end.",
        f"{'branch':<24}{'params (M)':>12}{'GFLOPs':>10}",
        rule,
    ]
    lines += [_cost_line(row, cost) for row, cost in rows.items() if row not in _COST_TOTALS]
    lines += [
        rule,
        _cost_line("training total", rows["train"]),
        _cost_line("deployed", rows["deploy"]),
        rule,
        _cost_line(f"{heads} classifier{'s' if heads > 1 else ''} (training)", rows["classifiers"]),
    ]
    train, deploy = rows["train"], rows["deploy"]
    lines.append(
        f"train/deploy ratio (classifiers excluded): "
        f"params {train['params'] / deploy['params']:.2f}x, "
        f"FLOPs {train['flops'] / deploy['flops']:.2f}x"
    )
    return "\n".join(lines)
