"""Exact mAP / CMC / mINP under the Market-1501 protocol, chunked over queries.

Protocol (identical to torchreid 0.2.5's ``evaluate_rank``, Python path):

* per query, gallery entries with the query's pid AND camera are removed ("junk");
* the positives are the remaining entries with the query's pid; a query without any
  is skipped (it counts in neither the numerator nor the denominator);
* CMC[k] = fraction of valid queries whose first positive ranks within k+1;
* AP = mean over positives of (positives up to it / its rank), as torchreid;
* INP = #positives / rank of the hardest positive, mINP its mean (fast-reid's, Ye et al.).

Ties: equal distances are ordered by gallery index (the earlier entry ranks first),
exactly what a stable argsort of each row gives. No other pid is special: pid 0
(Market-1501 distractors) is an ordinary negative; drop junk pid -1 before calling.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .distance import DistanceBlocks
from .ranking import BYTES_PER_ENTRY, PositiveLookup, positive_ranks
from .validate import (
    as_features,
    as_labels,
    check_max_rank,
    check_metric,
    check_same_dim,
    resolve_device,
)

# Default working memory beside the features: 3/4 for the (B, G) float32 distance
# block, 1/4 for scanning it for candidates. 1 GiB keeps Market-1501 (15,913
# gallery) in one block and gives ~370-query blocks for a 515k gallery: the matrix
# product measured ~25% slower with ~190-row blocks and within noise of its best from
# ~400 rows on.
DEFAULT_MEMORY_BUDGET = 2**30


def _labels(q_pids, g_pids, q_camids, g_camids, nq: int, ng: int, q_of: str, g_of: str):
    return (
        as_labels(q_pids, "q_pids", nq, q_of),
        as_labels(g_pids, "g_pids", ng, g_of),
        as_labels(q_camids, "q_camids", nq, q_of),
        as_labels(g_camids, "g_camids", ng, g_of),
    )


def _valid_queries(lookup: PositiveLookup, q_pids: np.ndarray, q_camids: np.ndarray):
    npos = lookup.num_positives(q_pids, q_camids)
    valid = np.flatnonzero(npos > 0)
    if valid.size == 0:
        raise ValueError(
            "no valid query: no query has a gallery entry with its pid from another camera"
        )
    return valid


def chunk_rows(
    num_gallery: int, memory_budget: int, chunk_size: int | None, blocks: int = 1
) -> int:
    """Queries per block: ``blocks`` (B, G) float32 blocks share 3/4 of the budget."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be positive, got {memory_budget}")
    return max(1, memory_budget * 3 // 4 // (4 * num_gallery * blocks))


def group_entries(memory_budget: int) -> int:
    """Distance entries scanned for candidates at once: a quarter of the budget in the
    worst case (every entry a candidate), at most 32M (fewer, larger steps measured
    faster on a busy machine; beyond that the scan gains nothing)."""
    return max(1, min(memory_budget // 4 // BYTES_PER_ENTRY, 1 << 25))


def _row_stats(npos: np.ndarray, ranks: np.ndarray):
    """Per-row AP, INP (float64) and first-positive rank from ``positive_ranks``."""
    row_end = np.cumsum(npos)
    row_start = row_end - npos
    pos_row = np.repeat(np.arange(npos.shape[0]), npos)
    k = np.arange(ranks.size) - row_start[pos_row]  # 0-based index among the row's hits
    with np.errstate(invalid="ignore", divide="ignore"):  # rows without positives: NaN
        ap = np.bincount(pos_row, (k + 1) / ranks, minlength=npos.shape[0]) / npos
        has = npos > 0
        first = np.zeros(npos.shape[0], dtype=np.int64)
        last = np.ones(npos.shape[0], dtype=np.int64)
        first[has] = ranks[row_start[has]]
        last[has] = ranks[row_end[has] - 1]
        inp = npos / last
    return ap, inp, first


class _Accumulator:
    """Collects per-query results and turns them into the summary dict."""

    def __init__(self, num_query: int, max_rank: int):
        self.max_rank = max_rank
        self.ap = np.full(num_query, np.nan)
        self.inp = np.full(num_query, np.nan)
        self.first = np.zeros(num_query, dtype=np.int64)
        self.valid = np.zeros(num_query, dtype=bool)

    def add(self, query_idx: np.ndarray, npos: np.ndarray, ranks: np.ndarray) -> None:
        ap, inp, first = _row_stats(npos, ranks)
        ok = npos > 0
        idx = query_idx[ok]
        self.ap[idx], self.inp[idx], self.first[idx] = ap[ok], inp[ok], first[ok]
        self.valid[idx] = True

    def result(self) -> dict:
        n = int(self.valid.sum())
        first = self.first[self.valid]
        hist = np.bincount(np.minimum(first, self.max_rank + 1), minlength=self.max_rank + 2)
        hits = np.cumsum(hist)[1 : self.max_rank + 1]
        # float32 like torchreid (sum of float32 0/1 hits divided by the count).
        cmc = hits.astype(np.float32) / np.float32(n)
        return {
            "mAP": float(self.ap[self.valid].mean()),
            "mINP": float(self.inp[self.valid].mean()),
            "cmc": cmc,
            "num_valid_queries": n,
            "AP": self.ap,
            "INP": self.inp,
            "valid": self.valid,
        }


def evaluate(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "euclidean",
    max_rank: int = 50,
    rerank: bool = False,
    device: str | torch.device = "auto",
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank_neighbors: str = "exact",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict:
    """Exact Market-1501 mAP / CMC / mINP of query features against gallery features.

    Args:
        qf: (Q, D) query features, torch tensor or numpy array (computed in float32).
        gf: (G, D) gallery features.
        q_pids, q_camids: (Q,) integer identities / camera ids of the queries.
        g_pids, g_camids: (G,) integer identities / camera ids of the gallery.
        metric: ``'euclidean'`` (squared L2, as torchreid) or ``'cosine'`` (1 - cos).
        max_rank: CMC length; clipped to G when the gallery is smaller (as torchreid).
        rerank: apply k-reciprocal re-ranking (Zhong et al. 2017) to the distances
            first, with ``k1``, ``k2``, ``lambda_value`` (torchreid's defaults) and
            ``rerank_neighbors`` (``'exact'`` or ``'hnsw'``); see
            ``rerank.KReciprocalReranker`` for its cost (time quadratic in Q + G).
        device: ``'auto'`` (the device of a CUDA input, else CUDA if available, else
            CPU), or any torch device.
        chunk_size: queries per block; default from ``memory_budget``.
        memory_budget: bytes of working memory beside the features (approximate).

    Exactly tied distances rank by gallery order (the earlier gallery entry first), as
    a stable sort of each row would. Memory: the features plus about
    ``memory_budget``; no (Q, G) matrix is ever formed.

    Returns:
        dict with ``mAP``, ``mINP`` (floats), ``cmc`` ((max_rank,) float32),
        ``num_valid_queries`` (int), and per query ``AP``, ``INP`` ((Q,) float64, NaN
        for skipped queries) and ``valid`` ((Q,) bool).

    Raises:
        ValueError: NaN/Inf features, differing feature dimensions, empty inputs,
            label lengths that do not match the features, no valid query, unknown
            metric, ``max_rank < 1``.
    """
    metric = check_metric(metric)
    max_rank = check_max_rank(max_rank)
    dev = resolve_device(device, qf, gf)
    qf, _ = as_features(qf, "qf", dev)
    gf, g_sq = as_features(gf, "gf", dev)
    check_same_dim(qf, gf)
    nq, ng = qf.shape[0], gf.shape[0]
    q_pids, g_pids, q_camids, g_camids = _labels(
        q_pids, g_pids, q_camids, g_camids, nq, ng, "row of qf", "row of gf"
    )
    lookup = PositiveLookup(g_pids, g_camids)
    valid = _valid_queries(lookup, q_pids, q_camids)
    # Re-ranking holds a second (B, G) block (the overlap sums) beside the distances.
    rows = chunk_rows(ng, memory_budget, chunk_size, blocks=2 if rerank else 1)
    max_cand = group_entries(memory_budget)
    acc = _Accumulator(nq, min(max_rank, ng))

    with torch.inference_mode():
        if rerank:
            from .rerank import KReciprocalReranker

            source = KReciprocalReranker(
                qf,
                gf,
                metric,
                k1=k1,
                k2=k2,
                lambda_value=lambda_value,
                neighbors=rerank_neighbors,
                memory_budget=memory_budget,
                device=dev,
            )
        else:
            source = DistanceBlocks(gf, metric, g_sq)
        # One distance buffer for all blocks: a fresh 100+ MB allocation per block
        # would pay its page faults every time.
        buf = torch.empty((min(rows, valid.size), ng), dtype=torch.float32, device=dev)
        for s in range(0, valid.size, rows):
            idx = valid[s : s + rows]
            if rerank:
                dist = source.block(torch.from_numpy(idx).to(dev), out=buf)
            else:
                # Only valid queries get a distance row; the rest are skipped anyway.
                dist = source(qf[torch.from_numpy(idx).to(dev)], out=buf)
            gidx, is_pos, is_junk = lookup.block(q_pids[idx], q_camids[idx])
            npos, ranks = positive_ranks(dist, gidx, is_pos, is_junk, max_cand)
            acc.add(idx, npos, ranks)
    return acc.result()


def evaluate_distmat(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    device: str | torch.device = "auto",
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict:
    """``evaluate`` on a precomputed (Q, G) distance matrix (smaller = closer).

    Same protocol, tie rule and result dict as ``evaluate``; the matrix is read in
    float32 blocks of queries and never modified. ``+inf`` entries are allowed
    (ranked last, ties by gallery index); NaN is rejected.
    """
    max_rank = check_max_rank(max_rank)
    dev = resolve_device(device, distmat)
    dm = distmat.detach() if isinstance(distmat, Tensor) else torch.from_numpy(np.asarray(distmat))
    if dm.ndim != 2:
        raise ValueError(f"distmat must be 2-D (Q, G), got shape {tuple(dm.shape)}")
    nq, ng = dm.shape
    if nq == 0 or ng == 0:
        raise ValueError(f"distmat is empty (shape {tuple(dm.shape)})")
    if dm.is_complex() or dm.dtype == torch.bool:
        raise ValueError(f"distmat must be real-valued, got dtype {dm.dtype}")
    q_pids, g_pids, q_camids, g_camids = _labels(
        q_pids, g_pids, q_camids, g_camids, nq, ng, "distmat row", "distmat column"
    )
    lookup = PositiveLookup(g_pids, g_camids)
    valid = _valid_queries(lookup, q_pids, q_camids)
    rows = chunk_rows(ng, memory_budget, chunk_size)
    max_cand = group_entries(memory_budget)
    acc = _Accumulator(nq, min(max_rank, ng))
    with torch.inference_mode():
        for s in range(0, valid.size, rows):
            idx = valid[s : s + rows]
            block = dm[torch.from_numpy(idx).to(dm.device)].to(device=dev, dtype=torch.float32)
            if bool(torch.isnan(block).any()):
                raise ValueError("distmat contains NaN values")
            gidx, is_pos, is_junk = lookup.block(q_pids[idx], q_camids[idx])
            npos, ranks = positive_ranks(block, gidx, is_pos, is_junk, max_cand)
            acc.add(idx, npos, ranks)
    return acc.result()
