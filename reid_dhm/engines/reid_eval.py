"""The one re-ID evaluator: ``reid-dhm test``, ``train --eval-only`` and training's test.

``ReidEvaluator(query_loader, gallery_loader, ...)(model)`` embeds both splits with
:func:`~reid_dhm.inference.extract_loader_features` and ranks them with
:func:`~reid_dhm.retrieval.result.evaluate_branches`. Under DDP every process embeds
its contiguous shard with rank 0's BN statistics (those a checkpoint holds), and rank
0 gathers the features in data-set order and ranks them alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..inference import extract_loader_features
from ..retrieval.metrics import check_ranks
from ..retrieval.result import ReidEvaluation, evaluate_branches
from ..utils.branches import MAIN
from ..utils.checkpoint import unwrap
from ..utils.options import RANKS
from . import distributed as dist
from .reid_loaders import sharded_eval_loader
from .seeding import workers_ignore_stop_signals


class ReidEvaluator:
    """Evaluate a model on one data set's query/gallery split.

    Args:
        query_loader, gallery_loader: torchreid test loaders (``data`` dicts with
            ``img`` (B, 3, H, W), ``pid``, ``camid``, ``impath``), not shuffled.
        dataset: the data set's name (carried by the result).
        branches: the branches evaluated, main first (``('main',)``, or every branch).
        metric: ``'euclidean'`` or ``'cosine'``; rerank: k-reciprocal re-ranking.
        ranks: the Rank-k values reported.
        device: where features are ranked; None = the model's device.
        progress: show the embedding's progress (main process only): a bar on a
            terminal, else a line every 30 s.
    """

    def __init__(
        self,
        query_loader,
        gallery_loader,
        *,
        dataset: str = "",
        branches: Sequence[str] = (MAIN,),
        metric: str = "euclidean",
        rerank: bool = False,
        ranks: Sequence[int] = RANKS,
        device=None,
        progress: bool = False,
    ):
        # Stop signals are the main process's to act on (it stops the evaluation itself).
        self.query_loader = workers_ignore_stop_signals(query_loader)
        self.gallery_loader = workers_ignore_stop_signals(gallery_loader)
        self.dataset = dataset
        self.branches = tuple(branches)
        self.metric = metric
        self.rerank = rerank
        self.ranks = check_ranks(ranks)  # a bad rank fails before anything is embedded
        self.device = device
        self.progress = progress

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> ReidEvaluation | None:
        """Evaluate ``model`` (bare or DDP-wrapped); every process must call this.

        Returns:
            The evaluation on the main process; None on the others.
        """
        bare = unwrap(model)
        dist.broadcast_buffers(bare)  # a collective: before any rank can return
        start = time.time()
        qf, q_pids, q_camids, q_paths = self._features(bare, self.query_loader, "query")
        gf, g_pids, g_camids, g_paths = self._features(bare, self.gallery_loader, "gallery")
        if not dist.is_main_process():
            return None
        extracted = time.time()
        device = self.device if self.device is not None else next(bare.parameters()).device
        evaluation = evaluate_branches(
            qf, gf, q_pids, g_pids, q_camids, g_camids, q_paths, g_paths,
            metric=self.metric, rerank=self.rerank, ranks=self.ranks, device=device,
            dataset=self.dataset,
        )  # fmt: skip
        evaluation.seconds["features"] = extracted - start
        return evaluation

    def _features(self, model: nn.Module, loader, what: str):
        """(features by branch (N, D_b), pids (N,), camids (N,), paths) of a whole loader.

        With several processes each embeds its shard; the shards concatenate in rank
        order, which is data-set order, so labels come from the data set itself.
        """
        # A bar on a terminal, else a line every 30 s (the main process speaks for all).
        show = self.progress and dist.is_main_process()
        desc = f"{what} features" if show else None
        if dist.world_size() == 1:
            return extract_loader_features(model, loader, self.branches, desc)
        local, _, _, _ = extract_loader_features(
            model, sharded_eval_loader(loader), self.branches, desc
        )
        feats = {b: dist.gather_concat(v) for b, v in local.items()}
        items = loader.dataset.data  # (path, pid, camid, dsetid) per image
        pids = np.asarray([it[1] for it in items], dtype=np.int64)
        camids = np.asarray([it[2] for it in items], dtype=np.int64)
        return feats, pids, camids, [it[0] for it in items]


__all__ = ["ReidEvaluator"]
