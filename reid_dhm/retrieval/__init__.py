"""Gallery ranking on any features: exact mAP / CMC / mINP, faiss gallery indexes, re-ranking.

* ``evaluate`` / ``evaluate_distmat``: Market-1501 protocol (torchreid's numbers), chunked;
  ``cmc_at(result, ranks)`` reads Rank-k from their result (``check_ranks`` checks ranks).
* ``GalleryIndex``: faiss flat / ivf / hnsw / ivfpq index with pids, camids and paths.
* ``re_ranking`` / ``KReciprocalReranker``: k-reciprocal re-ranking (Zhong et al. 2017).

Nothing here imports models, engines, tools or configs.
"""

from .index import KINDS, GalleryIndex, SearchResult
from .metrics import DEFAULT_MEMORY_BUDGET, check_ranks, cmc_at, evaluate, evaluate_distmat
from .rerank import KReciprocalReranker, re_ranking
from .validate import METRICS

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KINDS",
    "METRICS",
    "GalleryIndex",
    "KReciprocalReranker",
    "SearchResult",
    "check_ranks",
    "cmc_at",
    "evaluate",
    "evaluate_distmat",
    "re_ranking",
]
