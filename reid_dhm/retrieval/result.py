"""One re-ID evaluation as an object: what was ranked, how, and every branch's result.

``evaluate_branches`` ranks each branch's query features against its gallery features
with :func:`~reid_dhm.retrieval.evaluate` and returns a :class:`ReidEvaluation`. That
object is what every consumer reads: the console table, ``results.json``, the
ranked-results PNG and the HTML report (``reid_dhm.viz``) all render the same one, so
``reid-dhm test`` and a training run's evaluation cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..utils.branches import MAIN
from ..utils.options import RANKS
from .distance import DistanceBlocks
from .metrics import check_ranks, cmc_at, evaluate
from .rerank import KReciprocalReranker


@dataclass(frozen=True)
class SplitFeatures:
    """One side (query or gallery) of an evaluation, row ``i`` describing image ``i``.

    Attributes:
        features: (N, D) float32 main-branch features on the CPU.
        pids, camids: (N,) int64 identities and camera ids.
        paths: N image files.
    """

    features: Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    @classmethod
    def of(cls, features, pids, camids, paths) -> SplitFeatures:
        """Normalise the types (features (N, D) -> float32 CPU tensor, labels -> int64)."""
        feats = torch.as_tensor(features).detach().to("cpu", torch.float32)
        return cls(
            feats,
            np.asarray(pids, dtype=np.int64),
            np.asarray(camids, dtype=np.int64),
            [str(p) for p in paths],
        )

    def __len__(self) -> int:
        return len(self.pids)


@dataclass
class ReidEvaluation:
    """A model's evaluation on one data set's query/gallery split.

    Attributes:
        dataset: the data set's name.
        metric: ``'euclidean'`` or ``'cosine'``; rerank: k-reciprocal re-ranking.
        ranks: the Rank-k values reported (each >= 1).
        raw: ``{branch: evaluate() result}``, main branch first: ``mAP``, ``mINP``,
            ``cmc`` ((min(max_rank, G),)), ``num_valid_queries`` and per query ``AP``,
            ``INP`` ((Q,), NaN for skipped queries) and ``valid`` ((Q,) bool).
        query, gallery: the main branch's features and their images' labels and paths.
        seconds: wall-clock time of ``'features'`` (extraction) and ``'ranking'``, when
            the evaluator measured them.
    """

    dataset: str
    metric: str
    rerank: bool
    ranks: tuple[int, ...]
    raw: dict[str, dict]
    query: SplitFeatures
    gallery: SplitFeatures
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def branches(self) -> tuple[str, ...]:
        """The evaluated branches, main first."""
        return tuple(self.raw)

    def table(self) -> dict[str, dict]:
        """``{branch: {'mAP', 'mINP', 'rank<r>' for r in ranks, 'num_valid_queries'}}``.

        Fractions in [0, 1] as plain floats (JSON-ready); main branch first. A rank
        beyond a gallery smaller than it reads the CMC's last value (``cmc_at``).
        """
        return {branch: table_row(res, self.ranks) for branch, res in self.raw.items()}

    @property
    def main(self) -> dict:
        """The main branch's row of :meth:`table`."""
        return table_row(self.raw[MAIN], self.ranks)

    def distances(self, queries: Sequence[int] | np.ndarray) -> Tensor:
        """(P, G) distances of the picked queries to every gallery image, main branch.

        The evaluation's own distance (metric, and re-ranking when it re-ranked), so a
        picture of a ranking shows the ranking its numbers were computed on.
        """
        picks = torch.as_tensor(np.asarray(queries, dtype=np.int64))
        qf, gf = self.query.features, self.gallery.features
        if self.rerank:
            # Re-ranking needs every query and gallery item, not only the picked queries.
            reranker = KReciprocalReranker(qf, gf, self.metric, device="cpu")
            return reranker.block(picks).clone()
        return DistanceBlocks(gf, self.metric)(qf[picks])


def table_row(result: Mapping, ranks: Sequence[int]) -> dict:
    """One ``evaluate`` result -> ``{'mAP', 'mINP', 'rank<r>'..., 'num_valid_queries'}``."""
    return {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        **{f"rank{r}": v for r, v in cmc_at(result, ranks).items()},
        "num_valid_queries": int(result["num_valid_queries"]),
    }


def evaluate_branches(
    q_feats: Mapping[str, Tensor],
    g_feats: Mapping[str, Tensor],
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    q_paths: Sequence[str],
    g_paths: Sequence[str],
    *,
    metric: str = "euclidean",
    rerank: bool = False,
    ranks: Sequence[int] = RANKS,
    device="auto",
    dataset: str = "",
) -> ReidEvaluation:
    """Rank every branch's queries against its gallery (exact Market-1501 protocol).

    Args:
        q_feats, g_feats: ``{branch: (Q, D_b) / (G, D_b) features}`` with the same
            branches, ``main`` among them (its features are kept for pictures and
            reports; it comes first in the result).
        q_pids, q_camids: (Q,) labels; g_pids, g_camids: (G,); q_paths, g_paths: files.
        metric, rerank, device: as :func:`~reid_dhm.retrieval.evaluate`.
        ranks: Rank-k values to report; the CMC is computed to ``max(50, *ranks)``.
        dataset: the data set's name, for the result's readers.

    Raises:
        ValueError: bad ranks, branches that differ or lack ``main``, or what
            ``evaluate`` raises (no valid query, ...).
    """
    ranks = check_ranks(ranks)
    if list(q_feats) != list(g_feats) or MAIN not in q_feats:
        raise ValueError(
            f"query branches {list(q_feats)} and gallery branches {list(g_feats)} must be "
            f"the same and include {MAIN!r}"
        )
    start = time.time()
    raw = {}
    for branch in (MAIN, *(b for b in q_feats if b != MAIN)):  # main first, as tables show
        raw[branch] = evaluate(
            q_feats[branch], g_feats[branch], q_pids, g_pids, q_camids, g_camids,
            metric=metric, max_rank=max(50, *ranks), rerank=rerank, device=device,
        )  # fmt: skip
    return ReidEvaluation(
        dataset=dataset,
        metric=metric,
        rerank=bool(rerank),
        ranks=ranks,
        raw=raw,
        query=SplitFeatures.of(q_feats[MAIN], q_pids, q_camids, q_paths),
        gallery=SplitFeatures.of(g_feats[MAIN], g_pids, g_camids, g_paths),
        seconds={"ranking": time.time() - start},
    )


__all__ = ["ReidEvaluation", "SplitFeatures", "evaluate_branches", "table_row"]
