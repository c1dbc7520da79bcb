"""``reid-dhm test`` as a library call: evaluate a checkpoint on a data set's test split.

The model is rebuilt from the checkpoint, its preprocessing (input size, normalisation)
from the checkpoint's config, and each of the data set's query/gallery splits is
evaluated by the same :class:`~reid_dhm.engines.reid_eval.ReidEvaluator` that training
and ``train --eval-only`` use, so the numbers agree with a run's ``results.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..retrieval.metrics import check_ranks
from ..retrieval.result import ReidEvaluation
from ..utils.options import RANKS


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    dataset: str,
    root: str | os.PathLike = "reid-data",
    *,
    per_branch: bool = False,
    metric: str | None = None,
    rerank: bool = False,
    ranks: Sequence[int] = RANKS,
    batch_size: int = 100,
    workers: int = 2,
    device: str = "auto",
    skip_bad_images: bool = False,
    report_dir: str | os.PathLike | None = None,
    report_single_file: bool = False,
    output: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
) -> dict[str, ReidEvaluation]:
    """Evaluate ``checkpoint`` on every test split of ``dataset``; print each table.

    Args:
        checkpoint: a reid_dhm checkpoint file.
        dataset, root: the data set and its data root (``folder``: the folder itself).
        per_branch: evaluate every branch, not only ``main`` (paper Table 5).
        metric: ``'euclidean'`` / ``'cosine'``; None = the one the model was trained with.
        rerank: k-reciprocal re-ranking; ranks: the Rank-k values reported (each >= 1).
        batch_size, workers: of the test loaders; device: network and ranking;
        skip_bad_images: leave unreadable images out (with a warning), not fail.
        report_dir: also write the HTML report there (a sub-folder per split when the
            data set has several).
        report_single_file: the report as one HTML file with embedded thumbnails
            (``report_dir`` + ``.html``) instead of a folder.
        output: also write ``{split: table}`` as JSON there.
        log: where the tables and timing lines go.

    Returns:
        ``{split name: ReidEvaluation}``.
    """
    from ..engines.reid_eval import ReidEvaluator
    from ..utils.branches import MAIN

    ranks = check_ranks(ranks)  # before the checkpoint is loaded and anything embedded
    ckpt, model, dev = _load(checkpoint, device)
    cfg = ckpt.get("config") or {}
    manager = _test_datamanager(
        cfg.get("data", {}), dataset, root, batch_size, workers, dev, skip_bad_images
    )
    evaluations = {}
    for name, loaders in manager.test_loader.items():
        evaluator = ReidEvaluator(
            loaders["query"], loaders["gallery"], dataset=name,
            branches=model.branch_names if per_branch else (MAIN,),
            metric=metric or trained_metric(cfg), rerank=rerank, ranks=ranks, device=dev,
            progress=True,
        )  # fmt: skip
        evaluation = evaluations[name] = evaluator(model)
        log(describe(evaluation))
        if report_dir is not None:
            folder = Path(report_dir) if len(manager.test_loader) == 1 else Path(report_dir) / name
            settings = {"per_branch": per_branch, "rerank": rerank, "ranks": list(ranks)}
            page = _report(folder, evaluation, ckpt, checkpoint, root, settings, report_single_file)
            log(f"report: {page}")
    if output is not None:
        _write_tables(output, evaluations)
    return evaluations


def _write_tables(path, evaluations: Mapping[str, ReidEvaluation]) -> None:
    """``{split: {branch: {mAP, mINP, rank<k>, num_valid_queries}}}`` as JSON."""
    from ..utils.io import atomic_write_text

    tables = {name: ev.table() for name, ev in evaluations.items()}
    atomic_write_text(path, json.dumps(tables, indent=1))


def _load(checkpoint, device: str):
    """(the checkpoint, its model in eval mode on the device, the torch device)."""
    from ..models.checkpoint import model_from_checkpoint
    from ..utils.checkpoint import load_checkpoint
    from ..utils.device import resolve_device

    ckpt = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    return ckpt, model_from_checkpoint(ckpt).to(dev).eval(), dev


def trained_metric(cfg: Mapping) -> str:
    """The distance a run evaluated with (``test.normalize_feature`` means cosine)."""
    test = cfg.get("test", {})
    return "cosine" if test.get("normalize_feature") else test.get("metric", "euclidean")


def describe(evaluation: ReidEvaluation) -> str:
    """The table, a note when ranks exceed the gallery, and where the time went."""
    from ..viz.tables import format_reid

    lines = [format_reid(evaluation)]
    nq, ng = len(evaluation.query), len(evaluation.gallery)
    if max(evaluation.ranks) > ng:
        lines.append(f"note: the gallery has {ng} images, so Rank-k for k > {ng} equals Rank-{ng}")
    seconds = evaluation.seconds
    lines.append(
        f"{nq} queries x {ng} gallery images: features {seconds.get('features', 0.0):.1f} s, "
        f"ranking {seconds.get('ranking', 0.0):.2f} s"
    )
    return "\n".join(lines)


def _test_datamanager(data: Mapping, dataset, root, batch_size, workers, device, skip_bad):
    """The data set's test loaders, preprocessed as the checkpoint's run trained."""
    from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from ..data.reid_manager import build_reid_datamanager
    from ..utils.options import DEFAULT_MAX_IMAGE_PIXELS

    return build_reid_datamanager(
        dataset,
        root,
        height=data.get("height", 256),
        width=data.get("width", 128),
        norm_mean=data.get("norm_mean", IMAGENET_MEAN),
        norm_std=data.get("norm_std", IMAGENET_STD),
        batch_size=1,  # nothing trains: the training loader is never read
        test_batch_size=batch_size,
        workers=workers,
        pin_memory=device.type == "cuda",
        skip_bad_images=skip_bad,
        max_image_pixels=data.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        training=False,
    )


def _report(
    folder: Path, evaluation: ReidEvaluation, ckpt: Mapping, checkpoint, root, settings, single
) -> Path:
    """The HTML report of one split of a checkpoint's evaluation; its config section
    shows this evaluation's ``settings``, not the training's."""
    from ..viz.report import write_report

    return write_report(
        folder,
        evaluation,
        title=f"{ckpt.get('model_name', 'model')} on {evaluation.dataset}",
        info={
            "dataset": f"{evaluation.dataset} ({root})",
            "checkpoint": str(checkpoint),
            "epochs trained": ckpt.get("epoch"),
        },
        config=ckpt.get("config") or None,
        settings=settings,
        single_file=single,
    )


__all__ = ["describe", "evaluate_checkpoint", "trained_metric"]
