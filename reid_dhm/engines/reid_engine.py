"""The DHM re-ID engine: torchreid's ``ImageSoftmaxEngine`` with the DHM objective.

What it overrides, and why:

* ``forward_backward``: ``DHMLoss`` on the model's per-branch output; returns every
  named term (``ce/main``, ``kl/aux1->main``, ...) and per-branch accuracy.
* ``train``: draws the epoch's active branches from the ``BranchSampler``, applies
  staged freezing through our own ``set_backbone_frozen`` (torchreid's helper does
  not reach BN statistics inside DDP), shows a progress bar on a terminal (else a
  progress line every ``print_freq`` iterations), logs every term to TensorBoard,
  records per-epoch history and writes a checkpoint every epoch.
* ``run``: torchreid's loop, except that a run with nothing left to train
  (``start_epoch >= max_epoch``) only evaluates instead of rewriting the checkpoint.
* ``_evaluate``: features of the main branch (and, on request, every branch), ranked
  by ``reid_dhm.evaluate`` (exact Market-1501 protocol, fast); prints mAP, mINP, Rank-k.
  The ranked-results PNG uses the same distance (metric, re-ranking).
* ``save_model``: our atomic, self-describing checkpoint (torchreid's fails when the
  scheduler is None and is not ``weights_only`` loadable).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchreid.reid.engine import ImageSoftmaxEngine
from torchreid.reid.utils import MetricMeter
from tqdm import tqdm

from ..inference import extract_loader_features
from ..losses import BranchSampler, DHMLoss
from ..models import MAIN, BranchOutputs
from ..retrieval import KReciprocalReranker, cmc_at, evaluate
from ..retrieval.distance import DistanceBlocks
from ..utils.checkpoint import save_checkpoint, unwrap
from ..utils.rng import rng_state
from . import distributed as dist
from .amp import autocast, backward_step, check_amp
from .console import epoch_terms, progress_line
from .freezing import set_backbone_frozen
from .grad_monitor import PREFIX as MONITOR_PREFIX
from .grad_monitor import GradientMonitor
from .guards import (
    EvaluationFailed,
    NonFiniteGuard,
    TrainingDiverged,
    TrainingInterrupted,
    agreed_loss,
    restore_buffers,
    snapshot_buffers,
)
from .plots import plot_ranked_results, plot_training_curves
from .reid_loaders import sharded_eval_loader

CHECKPOINT = "checkpoint.pth"


class DHMReIDEngine(ImageSoftmaxEngine):
    """Train and evaluate a DHM re-ID model through torchreid's ``Engine.run``.

    Args:
        datamanager: a torchreid ``ImageDataManager`` (see ``build_reid_datamanager``).
        model: a reid_dhm model (or DDP-wrapped), already on ``device``.
        optimizer, scheduler: from ``build_optimizer`` / ``build_scheduler``.
        criterion: the ``DHMLoss`` (mode, direction, label smoothing, ...).
        branch_sampler: draws active branches per epoch; None = all, every epoch.
        model_name: registry name, stored in checkpoints.
        config: resolved config, stored in checkpoints.
        per_branch: also evaluate every aux branch (paper Table 5).
        vis_queries, vis_topk: size of the ranked-results PNG written after the final test.
        history: per-epoch records of an earlier run (when resuming).
        is_main_process: only this process logs and writes files (DDP rank 0).
        grad_monitor_every: every this many iterations of an epoch, measure how the
            branches' gradients on the shared stem agree (``GradientMonitor``); 0 = off.
        report: after the final evaluation, write the HTML report into
            ``save_dir/report`` (``reid_dhm.report.write_report``).
        preprocessing: how images become model input (a ``Preprocessing``), stored in
            every checkpoint as its own field for ``FeatureExtractor`` and exporters.
        nonfinite, nonfinite_max_skips: what a NaN / inf loss does (``NonFiniteGuard``):
            ``'stop'`` at once, or ``'skip'`` the batch (stop after that many in a row).
        should_stop: called after every iteration; a signal number means stop now
            (``TrainingInterrupted``), e.g. after the command line caught SIGTERM.
        amp: mixed precision in training: ``'none'``, ``'bf16'`` or ``'fp16'`` (CUDA,
            with a GradScaler); the loss is computed in float32 either way.
    """

    def __init__(
        self,
        datamanager,
        model,
        optimizer,
        criterion: DHMLoss,
        scheduler=None,
        branch_sampler: BranchSampler | None = None,
        model_name: str = "model",
        config: Mapping | None = None,
        per_branch: bool = False,
        vis_queries: int = 6,
        vis_topk: int = 8,
        history: Sequence[Mapping] | None = None,
        is_main_process: bool = True,
        train_sampler=None,
        grad_monitor_every: int = 0,
        report: bool = False,
        preprocessing=None,
        nonfinite: str = "stop",
        nonfinite_max_skips: int = 10,
        should_stop: Callable[[], int | None] | None = None,
        amp: str = "none",
    ):
        device = next(unwrap(model).parameters()).device
        super().__init__(
            datamanager, model, optimizer, scheduler=scheduler, use_gpu=device.type == "cuda"
        )
        self.device = device
        self.criterion = criterion
        self.branch_sampler = branch_sampler
        self.model_name = model_name
        self.config = dict(config) if config is not None else None
        self.per_branch = per_branch
        self.vis_queries = vis_queries
        self.vis_topk = vis_topk
        self.history = [dict(h) for h in (history or [])]
        self.is_main = is_main_process
        self.train_sampler = train_sampler  # a DistributedSampler needs set_epoch()
        self.active = unwrap(model).branch_names
        self.monitor = (
            GradientMonitor(model, criterion, grad_monitor_every) if grad_monitor_every else None
        )
        self.report = report
        self.preprocessing = preprocessing
        self.guard = NonFiniteGuard(nonfinite, nonfinite_max_skips)
        self.should_stop = should_stop
        self._written_epoch = None
        self.epoch, self.batch_idx = getattr(self, "epoch", 0), 0  # also outside train()
        self.amp = check_amp(amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.results: dict = {}
        self._last_eval = None
        self.save_dir: Path | None = None

    # ------------------------------------------------------------------ training
    def forward_backward(self, data) -> dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        imgs = imgs.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        monitored = {}
        if self.monitor is not None and self.monitor.due(self.batch_idx):
            monitored = self.monitor.measure(imgs, pids, self.active)
        bare = unwrap(self.model)
        # Skipping a batch must also undo what its forward pass did to BN statistics.
        saved = snapshot_buffers(bare) if self.guard.policy == "skip" else None
        with autocast(self.amp, self.device):
            output = self.model(imgs)
        if self.amp != "none":  # the loss in float32 whatever the autocast dtype
            output = BranchOutputs(
                logits=OrderedDict((b, z.float()) for b, z in output.logits.items()),
                features=OrderedDict((b, f.float()) for b, f in output.features.items()),
            )
        losses = self.criterion(output, pids, active=self.active)
        self.optimizer.zero_grad(set_to_none=True)
        # The console line reads every term anyway: this is today's one sync an iteration.
        summary = {k: float(v.detach()) for k, v in losses.items()}
        value = agreed_loss(summary["loss"])  # every rank takes the same decision
        if not self.guard.allow_step(
            value, self.epoch + 1, self.batch_idx + 1, self.get_current_lr()
        ):
            restore_buffers(bare, saved)
            return None
        backward_step(losses["loss"], self.optimizer, self.scaler)
        for branch, logits in output.logits.items():
            acc = (logits.detach().argmax(1) == pids).float().mean()
            summary[f"acc/{branch}"] = 100.0 * float(acc)
        if monitored and self.writer is not None and self.is_main:
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, value in monitored.items():
                self.writer.add_scalar(f"Monitor/{name[len(MONITOR_PREFIX) :]}", value, n_iter)
        return summary

    def two_stepped_transfer_learning(self, epoch, fixbase_epoch, open_layers, model=None):
        """Staged freezing: only new layers train during the first ``fixbase_epoch`` epochs."""
        return set_backbone_frozen(self.model, epoch < fixbase_epoch)

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None):
        bare = unwrap(self.model)
        if self.branch_sampler is not None:
            self.active = self.branch_sampler.sample(self.epoch)
        else:
            self.active = bare.branch_names
        bare.set_active_branches(self.active)
        self.criterion.set_epoch(self.epoch)
        if self.train_sampler is not None and hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(self.epoch)
        self.set_model_mode("train")
        frozen = self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers)
        meters = MetricMeter()
        self.num_batches = len(self.train_loader)
        start = time.time()
        show = self.is_main and sys.stderr.isatty()
        # Off a terminal (a log file), a line every print_freq iterations instead of a bar.
        log_every = print_freq if self.is_main and not show and print_freq > 0 else 0
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            disable=not show,
            leave=False,
        )
        self.guard.new_epoch()
        for self.batch_idx, data in enumerate(bar):
            summary = self.forward_backward(data)
            if summary is None:  # a non-finite loss, skipped (train.nonfinite=skip)
                self._check_stop()
                continue
            meters.update(summary)
            bar.set_postfix(loss=f"{meters.meters['loss'].avg:.3f}")
            if log_every and (self.batch_idx + 1) % log_every == 0:
                print(
                    progress_line(
                        self.epoch + 1,
                        self.max_epoch,
                        self.batch_idx + 1,
                        self.num_batches,
                        meters.meters["loss"].avg,
                        self.get_current_lr(),
                    ),
                    flush=True,
                )
            if self.writer is not None and self.is_main:
                n_iter = self.epoch * self.num_batches + self.batch_idx
                for name, value in summary.items():
                    self.writer.add_scalar(f"Train/{name}", value, n_iter)
                self.writer.add_scalar("Train/lr", self.get_current_lr(), n_iter)
            self._check_stop()
        lr = self.get_current_lr()
        self.update_lr()
        record = {"epoch": self.epoch + 1, "lr": lr, "frozen": bool(frozen)}
        record.update(epoch_means(meters))
        if self.criterion.mode == "dhm":
            record["kl_weight"] = self.criterion.current_kl_weight
        if self.monitor is not None:
            record.update(self.monitor.epoch_means())
        if self.guard.skipped:
            record["skipped_batches"] = self.guard.skipped
        record["active"] = list(self.active)
        record["seconds"] = time.time() - start
        self.history.append(record)
        if self.is_main:
            print(
                f"epoch {self.epoch + 1}/{self.max_epoch}  {epoch_terms(record)}  lr {lr:.2e}  "
                f"{'[backbone frozen]  ' if frozen else ''}{record['seconds']:.0f}s",
                flush=True,
            )
            if self.save_dir is not None:
                self._write_checkpoint(self.epoch + 1)

    def _check_stop(self) -> None:
        signum = self.should_stop() if self.should_stop is not None else None
        if signum:
            raise TrainingInterrupted(signum, self.epoch + 1, self.batch_idx + 1)

    def run(self, save_dir="log", max_epoch=0, start_epoch=0, **kwargs):
        """torchreid's ``Engine.run`` plus the curves and ranked-results PNGs at the end.

        With ``start_epoch >= max_epoch`` (a finished checkpoint resumed) there is
        nothing to train: the model is evaluated and no checkpoint is written.
        """
        self.save_dir = Path(save_dir)
        if start_epoch >= max_epoch and not kwargs.get("test_only"):
            # torchreid's loop would not run, leaving self.epoch at 0, and its final
            # save_model(self.epoch) would rewrite the checkpoint as "1 epoch done".
            kwargs["test_only"] = True
        # The last finished epoch, as torchreid's loop leaves it (evaluation logs use it).
        self.epoch = max(start_epoch - 1, 0)
        self.max_epoch = max_epoch
        if not self.is_main:
            self.writer = _NullWriter()  # torchreid would open a second event file
        elif self.writer is None and not kwargs.get("test_only"):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(save_dir))
        # torchreid's loop prints progress lines; only rank 0 speaks.
        quiet = (
            contextlib.nullcontext() if self.is_main else contextlib.redirect_stdout(io.StringIO())
        )
        if start_epoch and (self.save_dir / CHECKPOINT).is_file():
            self.guard.checkpoint = f"{self.save_dir / CHECKPOINT} (epoch {start_epoch})"
        trained = start_epoch >= max_epoch  # nothing left to train: only the test can fail
        try:
            with quiet:
                super().run(
                    save_dir=str(save_dir), max_epoch=max_epoch, start_epoch=start_epoch, **kwargs
                )
        except (TrainingDiverged, TrainingInterrupted):
            raise
        except Exception as err:
            done = self.history[-1]["epoch"] if self.history else start_epoch
            if (trained or done >= max_epoch) and not kwargs.get("test_only"):
                raise EvaluationFailed(done, err) from err
            raise
        if self.is_main:
            if self.history:
                plot_training_curves(self.history, self.save_dir / "training_curves.png")
            if self._last_eval is not None and self.vis_queries > 0:
                self.write_ranked_png(self.save_dir / "ranked_results.png")
            if self._last_eval is not None and self.report:
                self.write_report(self.save_dir / "report")

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _evaluate(
        self,
        dataset_name="",
        query_loader=None,
        gallery_loader=None,
        dist_metric="euclidean",
        normalize_feature=False,
        ranks=(1, 5, 10, 20),
        rerank=False,
        **_unused,
    ):
        bare = unwrap(self.model)
        branches = tuple(bare.branch_names) if self.per_branch else (MAIN,)
        show = self.is_main and sys.stderr.isatty()
        # Every process embeds its shard with rank 0's BN statistics (those checkpointed);
        # rank 0 gathers the features in data-set order and ranks them.
        dist.broadcast_buffers(bare)
        qf, q_pids, q_camids, q_paths = self._features(query_loader, branches, show, "query")
        gf, g_pids, g_camids, g_paths = self._features(gallery_loader, branches, show, "gallery")
        if not self.is_main:
            return 0.0, 0.0
        metric = "cosine" if normalize_feature else dist_metric
        max_rank = max(50, max(ranks))
        table, raw = {}, {}
        for branch in branches:
            res = raw[branch] = evaluate(
                qf[branch], gf[branch], q_pids, g_pids, q_camids, g_camids,
                metric=metric, max_rank=max_rank, rerank=rerank, device=self.device,
            )  # fmt: skip
            # cmc_at: a rank beyond a gallery smaller than it reads the CMC's last value.
            cmc = cmc_at(res, ranks)
            table[branch] = {
                "mAP": float(res["mAP"]),
                "mINP": float(res["mINP"]),
                **{f"rank{r}": cmc[r] for r in ranks},
                "num_valid_queries": int(res["num_valid_queries"]),
            }
        self.results[dataset_name] = table
        self._last_eval = _LastEval(
            qf[MAIN], gf[MAIN], q_pids, g_pids, q_camids, g_camids, q_paths, g_paths, metric,
            rerank, raw, dataset_name, tuple(ranks),
        )  # fmt: skip
        main = table[MAIN]
        if self.is_main:
            print(format_results(dataset_name, table, ranks, metric, rerank))
            if self.history and self.history[-1]["epoch"] == self.epoch + 1:
                self.history[-1].update(
                    {"test/mAP": 100 * main["mAP"], "test/rank1": 100 * main["rank1"]}
                )
            if self.writer is not None:
                for branch, row in table.items():
                    for key in ("mAP", "mINP", "rank1"):
                        self.writer.add_scalar(
                            f"Test/{dataset_name}/{branch}/{key}", row[key], self.epoch
                        )
        return main["rank1"], main["mAP"]

    def _features(self, loader, branches, show: bool, what: str):
        """(features by branch, pids, camids, paths) of a whole test loader, any process count."""
        if dist.world_size() == 1:
            return extract_loader_features(
                self.model, loader, branches, f"{what} features" if show else None
            )
        local, _, _, _ = extract_loader_features(
            self.model, sharded_eval_loader(loader), branches, f"{what} features" if show else None
        )
        feats = {b: dist.gather_concat(v) for b, v in local.items()}
        items = loader.dataset.data  # (path, pid, camid, dsetid); shards keep this order
        pids = np.asarray([it[1] for it in items])
        camids = np.asarray([it[2] for it in items])
        return feats, pids, camids, [it[0] for it in items]

    def write_ranked_png(self, path) -> Path:
        """Top-k gallery images for a spread of queries from the last evaluation.

        Ranked by the evaluation's own distance (metric and re-ranking), so the
        picture shows the ranking the printed numbers were computed on.
        """
        ev = self._last_eval
        n = min(self.vis_queries, len(ev.q_paths))
        picks = np.linspace(0, len(ev.q_paths) - 1, n).astype(int)
        if ev.rerank:
            # Re-ranking needs every query and gallery item, not only the picked queries.
            reranker = KReciprocalReranker(ev.qf, ev.gf, ev.metric, device="cpu")
            dist = reranker.block(torch.from_numpy(picks)).clone()
        else:
            dist = DistanceBlocks(ev.gf, ev.metric)(ev.qf[picks])
        # Same protocol as the metrics: hide same-identity images from the query's camera.
        junk = (ev.g_pids[None, :] == ev.q_pids[picks, None]) & (
            ev.g_camids[None, :] == ev.q_camids[picks, None]
        )
        dist[torch.from_numpy(junk)] = float("inf")
        k = min(self.vis_topk, len(ev.g_paths))
        d, idx = dist.topk(k, dim=1, largest=False)
        idx = idx.numpy()
        matches = ev.g_pids[idx] == ev.q_pids[picks, None]
        return plot_ranked_results(
            [ev.q_paths[i] for i in picks], ev.g_paths, idx, matches, path, distances=d.numpy()
        )

    def write_report(self, path) -> Path:
        """The HTML evaluation report of the last evaluation (``reid_dhm.report``)."""
        from ..report import write_report

        ev = self._last_eval
        info = {"dataset": ev.dataset, "model": self.model_name, "epochs trained": self.epoch + 1}
        if self.save_dir is not None:
            info["run"] = str(self.save_dir)
        return write_report(
            path, ev.results, ev.qf, ev.gf, ev.q_pids, ev.g_pids, ev.q_camids, ev.g_camids,
            ev.q_paths, ev.g_paths, metric=ev.metric, rerank=ev.rerank, ranks=ev.ranks,
            title=f"{self.model_name} on {ev.dataset}", info=info, config=self.config,
        )  # fmt: skip

    # -------------------------------------------------------------- checkpoints
    def save_model(self, epoch, rank1, save_dir, is_best=False):
        if self.is_main:
            self._write_checkpoint(epoch + 1)

    def _write_checkpoint(self, epochs_done: int) -> Path:
        path = save_checkpoint(
            Path(self.save_dir) / CHECKPOINT,
            self.model,
            self.model_name,
            epochs_done,
            config=self.config,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            metrics=self.results,
            history=self.history,
            preprocessing=self.preprocessing.to_dict() if self.preprocessing else None,
            rng=rng_state(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            # The final save rewrites the same epoch with the test metrics: no rotation.
            keep_previous=epochs_done != self._written_epoch,
        )
        self._written_epoch = epochs_done
        self.guard.checkpoint = f"{path} (epoch {epochs_done})"
        return path


class _LastEval(NamedTuple):
    """The main branch's features and labels of the last evaluation, and how it ranked."""

    qf: torch.Tensor
    gf: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_paths: list
    g_paths: list
    metric: str
    rerank: bool
    results: dict | None = None  # branch -> evaluate() result (for the HTML report)
    dataset: str = ""
    ranks: tuple = (1, 5, 10, 20)


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter on ranks that must not write."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_means(meters: MetricMeter) -> dict[str, float]:
    """Per-epoch averages of every logged term, over all processes' batches."""
    sums = {f"sum/{k}": m.sum for k, m in meters.meters.items()}
    sums.update({f"count/{k}": m.count for k, m in meters.meters.items()})
    total = dist.all_reduce_dict(sums)
    return {k: total[f"sum/{k}"] / max(total[f"count/{k}"], 1) for k in meters.meters}


def format_results(name: str, table: Mapping, ranks, metric: str, rerank: bool) -> str:
    """A small text table: one row per branch."""
    head = f"{'branch':<8}{'mAP':>7}{'mINP':>7}" + "".join(f"{'R' + str(r):>7}" for r in ranks)
    lines = [
        f"** {name}: {metric} distance{', re-ranked' if rerank else ''}, "
        f"{next(iter(table.values()))['num_valid_queries']} valid queries **",
        head,
    ]
    for branch, row in table.items():
        cells = [row["mAP"], row["mINP"], *(row[f"rank{r}"] for r in ranks)]
        lines.append(f"{branch:<8}" + "".join(f"{100 * v:>7.1f}" for v in cells))
    return "\n".join(lines)
