"""What differs between a re-ID run and a classification run: data, task, outputs.

``build_task(cfg, info)`` reads the data sections and returns a setup object with one
interface for :mod:`reid_dhm.runs.training`: the task for the training loop, the class
count, how the console and the output files render its evaluations.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..utils.branches import MAIN
from .errors import UsageError


def build_task(cfg: Mapping, info):
    """The re-ID or classification setup of ``cfg['task']``."""
    return ReidSetup(cfg, info) if cfg["task"] == "reid" else ClassificationSetup(cfg, info)


class ReidSetup:
    """torchreid's data manager, the re-ID task, its tables, ranked list and report."""

    what, digits = "identities", 3

    def __init__(self, cfg: Mapping, info):
        from ..data.reid_manager import build_reid_datamanager, prepare_reid_dataset
        from ..engines import distributed as dist
        from ..engines.reid_loaders import reid_train_loader

        self.cfg, self.info, d = cfg, info, cfg["data"]
        if info.distributed:
            if info.is_main:  # synthreid is drawn once, by rank 0, before anyone reads it
                prepare_reid_dataset(d["dataset"], d["root"])
            dist.barrier()
        # torchreid prints data set summaries; only rank 0 speaks.
        with contextlib.redirect_stdout(sys.stdout if info.is_main else io.StringIO()):
            self.manager = build_reid_datamanager(
                **reid_data_kwargs(cfg), pin_memory=info.device.type == "cuda"
            )
        reid_train_loader(
            self.manager, d["batch_size"], d["sampler"], d["num_instances"], cfg["train"]["seed"],
            augment=d["augment"], device=info.device,
        )  # fmt: skip
        self.num_classes = self.manager.num_train_pids
        self.task = None

    def adapt_model(self, model) -> None:
        """The model's own evaluation choices, then the task that evaluates it."""
        from ..data.preprocessing import Preprocessing
        from ..engines.reid_task import ReidTask

        test, d = self.cfg["test"], self.cfg["data"]
        if model.bnneck is not None:  # test.feature may differ from the checkpoint's choice
            model.set_eval_feature(test["feature"])
        self.task = ReidTask(
            self.manager,
            branches=tuple(model.branch_names) if test["per_branch"] else (MAIN,),
            metric="cosine" if test["normalize_feature"] else test["metric"],
            rerank=test["rerank"], ranks=test["ranks"], device=self.info.device,
            progress=self.info.is_main,  # a bar on a terminal, else lines
            preprocessing=Preprocessing(
                height=d["height"], width=d["width"], mean=d["norm_mean"], std=d["norm_std"]
            ),
        )  # fmt: skip

    def describe_data(self) -> str:
        from ..data.reid_manager import data_summary

        return data_summary(self.manager)

    def describe(self, evaluations) -> str:
        from ..viz.tables import format_reid

        return "\n".join(format_reid(ev) for ev in evaluations.values())

    describe_final = describe

    def restore(self, state: Mapping) -> None:
        pass

    def results(self, trainer) -> dict:
        return self.task.tables()

    def evaluation_results(self, evaluations) -> dict:
        return {name: ev.table() for name, ev in evaluations.items()}

    def finished(self, trainer) -> None:
        pass

    def render(self, evaluations, out: Path, model_name: str) -> None:
        """``ranked_results.png`` and (``test.report``) the HTML report of the last data set."""
        from ..viz.ranked import write_ranked_png
        from ..viz.report import write_report

        test = self.cfg["test"]
        evaluation = list(evaluations.values())[-1]
        if test["vis_queries"] > 0:
            write_ranked_png(
                evaluation, out / "ranked_results.png", test["vis_queries"], test["vis_topk"]
            )
        if test["report"]:
            info = {"dataset": evaluation.dataset, "model": model_name, "run": str(out)}
            title = f"{model_name} on {evaluation.dataset}"
            write_report(out / "report", evaluation, title=title, info=info, config=dict(self.cfg))


def reid_data_kwargs(cfg: Mapping) -> dict:
    """``data`` section -> ``build_reid_datamanager`` keyword arguments."""
    d = cfg["data"]
    keys = (
        "dataset", "root", "height", "width", "transforms", "norm_mean", "norm_std",
        "batch_size", "test_batch_size", "workers", "sampler", "num_instances", "combineall",
        "skip_bad_images", "max_image_pixels",
    )  # fmt: skip
    return {k: d[k] for k in keys}


class ClassificationSetup:
    """The real readers (CIFAR pickles, ImageNet folders, Fashion-MNIST), top-k errors."""

    what, digits = "classes", 4

    def __init__(self, cfg: Mapping, info):
        from ..engines.classification import ClassificationTask

        self.cfg, self.info = cfg, info
        train_set, test_set, self.num_classes = build_datasets(cfg)
        self.sizes = (len(train_set), len(test_set))
        train_loader, test_loader = classification_loaders(cfg, train_set, test_set, info.device)
        self.task = ClassificationTask(
            train_loader, test_loader, per_branch=cfg["test"]["per_branch"],
            amp=cfg["train"]["amp"], progress=info.is_main,
        )  # fmt: skip

    def adapt_model(self, model) -> None:
        pass

    def describe_data(self) -> str:
        n_train, n_test = self.sizes
        return (
            f"{self.cfg['data']['dataset']}: {n_train} training / {n_test} test images, "
            f"{self.num_classes} classes"
        )

    def describe(self, table) -> str:
        best, main = self.task.best, table[MAIN]
        line = f"  test err top1 {main['top1_err']:.2f} top5 {main['top5_err']:.2f}"
        line += f" (best {best['top1_err']:.2f} @ {best['epoch']})"
        return line + "".join(
            f"  {b} top1 {r['top1_err']:.2f}" for b, r in table.items() if b != MAIN
        )

    def describe_final(self, table) -> str:
        from ..viz.tables import format_classification

        return format_classification(table)

    def restore(self, state: Mapping) -> None:
        """The best epoch and last evaluation a resumed checkpoint had."""
        self.task.best = dict(state["best"]) if state.get("best") else None
        self.task.last = state.get("metrics") or None

    def results(self, trainer) -> dict:
        return self.task.results(trainer)

    def evaluation_results(self, table) -> dict:
        return {"epochs": None, "best": self.task.best, "final": table}

    def finished(self, trainer) -> None:
        if self.task.last:
            print(self.describe_final(self.task.last))
        best = self.task.best
        if best:
            print(
                f"best epoch {best['epoch']}: main top-1 error {best['top1_err']:.2f}, "
                f"top-5 {best['top5_err']:.2f} (best.pth)"
            )

    def render(self, table, out: Path, model_name: str) -> None:
        pass


def _evenly(dataset, n: int):
    """At most ``n`` samples, evenly spaced (class-sorted folders keep every class)."""
    from torch.utils.data import Subset

    if not n or n >= len(dataset):
        return dataset
    index = np.linspace(0, len(dataset) - 1, n).round().astype(np.int64).tolist()
    return Subset(dataset, index)


def build_datasets(cfg: Mapping):
    """``data`` section -> ``(train, test, num_classes)`` through the real readers."""
    from ..data.classification import build_classification_datasets, default_transform

    d = cfg["data"]
    name = d["dataset"]
    if d["height"] != d["width"]:
        raise UsageError(
            f"classification models take square images; data.height={d['height']} and "
            f"data.width={d['width']} differ"
        )
    transforms = list(d["transforms"])
    if not transforms:  # no augmentation: train on the evaluation transform
        train_transform = default_transform(name, False, d["height"])
    elif sorted(transforms) == ["random_crop", "random_flip"]:
        train_transform = None  # the paper's augmentation for this data set
    else:
        raise UsageError(
            f"data.transforms={transforms}: classification takes the paper's augmentation "
            f"[random_flip, random_crop] or none ([])"
        )
    train, test, num_classes = build_classification_datasets(
        name, d["root"], train_transform=train_transform, image_size=d["height"]
    )
    return _evenly(train, d["limit"]), _evenly(test, d["test_limit"]), num_classes


def classification_loaders(cfg: Mapping, train_set, test_set, device):
    """(train loader, test loader); batch sizes are global (split over processes)."""
    from torch.utils.data import DataLoader

    from ..engines import distributed as dist
    from ..engines.prefetch import DeviceLoader
    from ..engines.seeding import EpochIndexSampler, EpochSeededDataset, ignore_stop_signals

    d = cfg["data"]
    batch = dist.per_process_batch(d["batch_size"])
    sampler = dist.train_sampler(train_set, shuffle=True, seed=cfg["train"]["seed"])
    common = dict(
        num_workers=d["workers"],
        pin_memory=device.type == "cuda",
        persistent_workers=d["workers"] > 0,
        worker_init_fn=ignore_stop_signals,
    )
    # A last batch of one sample breaks BatchNorm in training mode: drop it then.
    # Augmentation is seeded per (seed, epoch, sample): resumed runs draw the same.
    train_loader = DataLoader(
        EpochSeededDataset(train_set, cfg["train"]["seed"]),
        batch_size=batch,
        sampler=EpochIndexSampler(sampler),
        drop_last=len(sampler) % batch == 1,
        **common,
    )
    if device.type == "cuda":
        # The next pinned batch is copied on a side stream while this one trains, as for
        # re-ID (issue 21); on CPU the plain loader is already where the model is.
        train_loader = DeviceLoader(train_loader, device)
    test_loader = DataLoader(
        test_set, batch_size=d["test_batch_size"], sampler=dist.eval_sampler(test_set), **common
    )
    return train_loader, test_loader


__all__ = ["ClassificationSetup", "ReidSetup", "build_datasets", "build_task", "reid_data_kwargs"]
