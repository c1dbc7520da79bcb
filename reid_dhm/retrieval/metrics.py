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

from ..utils.checks import check_int
from .distance import DistanceBlocks
from .ranking import (
    BYTES_PER_ENTRY,
    BYTES_PER_SLOT,
    BYTES_PER_SORTED_ENTRY,
    PositiveLookup,
    positive_ranks,
    sorted_rank_stats,
)
from .validate import (
    as_feature_pair,
    as_labels,
    check_metric,
    check_same_dim,
    compute_device,
)

# Default working memory beside the features: 3/4 for the (B, G) float32 distance
# block and the (B, C) per-pid arrays, 1/4 for scanning the block for candidates.
# 1 GiB keeps Market-1501 (15,913 gallery) in one block and gives ~390-query blocks
# for a 515k gallery: the matrix product measured ~25% slower with ~190-row blocks and
# within noise of its best from ~400 rows on.
DEFAULT_MEMORY_BUDGET = 2**30
# How positives are ranked: 'scan' (numpy on the host, the fastest on CPU), 'sort' (a
# stable sort on the compute device, no host round trip per block: the one for CUDA),
# 'auto' (scan on CPU, sort on CUDA).
RANKINGS = ("auto", "scan", "sort")


def _labels(q_pids, g_pids, q_camids, g_camids, nq: int, ng: int, q_of: str, g_of: str):
    return (
        as_labels(q_pids, "q_pids", nq, q_of),
        as_labels(g_pids, "g_pids", ng, g_of),
        as_labels(q_camids, "q_camids", nq, q_of),
        as_labels(g_camids, "g_camids", ng, g_of),
    )


def _valid_queries(lookup: PositiveLookup, q_pids: np.ndarray, q_camids: np.ndarray):
    """(indices of the queries with a positive, C = their largest same-pid count)."""
    npos = lookup.num_positives(q_pids, q_camids)
    valid = np.flatnonzero(npos > 0)
    if valid.size == 0:
        raise ValueError(
            "no valid query: no query has a gallery entry with its pid from another camera"
        )
    return valid, lookup.width(q_pids[valid])


def chunk_rows(
    num_gallery: int,
    memory_budget: int,
    chunk_size: int | None,
    blocks: int = 1,
    slots: int = 0,
    entry_bytes: int = 0,
) -> int:
    """Queries per block: 3/4 of the budget holds, per query, ``blocks`` float32 rows
    of G distances, ``slots`` (C) entries of the per-pid arrays (``BYTES_PER_SLOT``
    each; C = the largest number of gallery entries with one query's pid, up to G when
    the gallery is one identity) and ``entry_bytes`` more per distance entry (the sort
    path's masks and sort buffers)."""
    if chunk_size is not None:
        return check_int(chunk_size, "chunk_size")
    per_row = (4 * blocks + entry_bytes) * num_gallery + BYTES_PER_SLOT * slots
    return max(1, memory_budget * 3 // 4 // per_row)


def check_ranking(ranking: str, device: torch.device) -> str:
    """``ranking`` ('auto', 'scan' or 'sort') resolved for ``device``: 'scan' or 'sort'."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; valid ones are {list(RANKINGS)}")
    if ranking == "auto":
        return "scan" if device.type == "cpu" else "sort"
    return ranking


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
    """Collects per-query results and turns them into the summary dict (host path:
    ranks from the scan, block after block)."""

    def __init__(self, num_query: int, max_rank: int, num_gallery: int):
        self.requested_rank = max_rank
        self.max_rank = min(max_rank, num_gallery)
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

    def rank_block(self, lookup: PositiveLookup, labels, idx: np.ndarray, dist, max_cand):
        """Scan-rank the distance rows ``dist`` (B, G) of the queries ``idx`` (B,)."""
        q_pids, q_camids = labels
        gidx, is_pos, is_junk = lookup.block(q_pids[idx], q_camids[idx])
        self.add(idx, *positive_ranks(dist, gidx, is_pos, is_junk, max_cand))

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
            "max_rank": self.requested_rank,
            "num_valid_queries": n,
            "AP": self.ap,
            "INP": self.inp,
            "valid": self.valid,
        }


class _DeviceAccumulator:
    """The sort path's results, kept on the compute device until ``result`` (one copy
    to the host per evaluation, none per block)."""

    def __init__(self, labels, valid: np.ndarray, max_rank: int, device: torch.device):
        q_pids, g_pids, q_camids, g_camids = (torch.from_numpy(a).to(device) for a in labels)
        self.q_pids, self.q_camids, self.g_pids, self.g_camids = q_pids, q_camids, g_pids, g_camids
        self.valid_np = valid
        self.valid = torch.from_numpy(valid).to(device)
        self.max_rank = max_rank
        nq = q_pids.shape[0]
        self.ap = torch.full((nq,), float("nan"), dtype=torch.float64, device=device)
        self.inp = torch.full((nq,), float("nan"), dtype=torch.float64, device=device)
        self.first = torch.zeros(nq, dtype=torch.int64, device=device)
        # evaluate_distmat's NaN check, read once at the end instead of once per block.
        self.saw_nan = torch.zeros((), dtype=torch.bool, device=device)

    def rank_block(self, idx: Tensor, dist: Tensor) -> None:
        """Sort-rank the distance rows ``dist`` (B, G) of the queries ``idx`` (B,)."""
        ap, inp, first = sorted_rank_stats(
            dist, self.q_pids[idx], self.q_camids[idx], self.g_pids, self.g_camids
        )
        self.ap.index_copy_(0, idx, ap)
        self.inp.index_copy_(0, idx, inp)
        self.first.index_copy_(0, idx, first)

    def result(self) -> dict:
        acc = _Accumulator(self.ap.shape[0], self.max_rank, self.g_pids.shape[0])
        acc.ap, acc.inp, acc.first = (t.cpu().numpy() for t in (self.ap, self.inp, self.first))
        acc.valid[self.valid_np] = True
        return acc.result()


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
    ranking: str = "auto",
) -> dict:
    """Exact Market-1501 mAP / CMC / mINP of query features against gallery features.

    Args:
        qf: (Q, D) query features, torch tensor or numpy array (computed in float32).
        gf: (G, D) gallery features.
        q_pids, q_camids: (Q,) integer identities / camera ids of the queries.
        g_pids, g_camids: (G,) integer identities / camera ids of the gallery.
        metric: ``'euclidean'`` (squared L2, as torchreid) or ``'cosine'`` (1 - cos).
        max_rank: CMC length; clipped to G when the gallery is smaller (as torchreid).
            Read ranks with ``cmc_at(result, ranks)``, which handles that clipping.
        rerank: apply k-reciprocal re-ranking (Zhong et al. 2017) to the distances
            first, with ``k1``, ``k2``, ``lambda_value`` (torchreid's defaults) and
            ``rerank_neighbors`` (``'exact'`` or ``'hnsw'``); see
            ``rerank.KReciprocalReranker`` for its cost (time quadratic in Q + G).
        device: ``'auto'`` (the device of a CUDA input, else CUDA if available, else
            CPU), or any torch device.
        chunk_size: queries per block; default from ``memory_budget``.
        memory_budget: bytes (int) of working memory beside the features (approximate).
        ranking: ``'auto'`` (default: ``'scan'`` on CPU, ``'sort'`` on CUDA), ``'scan'``
            (positives ranked without sorting, numpy on the host) or ``'sort'`` (a stable
            sort of each row on the compute device, no host round trip per block). Both
            give the same numbers (AP to float64 rounding).

    Exactly tied distances rank by gallery order (the earlier gallery entry first), as
    a stable sort of each row would. Memory: the features plus about
    ``memory_budget``; no (Q, G) matrix is ever formed.

    Returns:
        dict with ``mAP``, ``mINP`` (floats), ``cmc`` ((min(max_rank, G),) float32),
        ``max_rank`` (the requested one), ``num_valid_queries`` (int), and per query
        ``AP``, ``INP`` ((Q,) float64, NaN for skipped queries) and ``valid`` ((Q,) bool).

    Raises:
        ValueError: NaN/Inf features, differing feature dimensions, empty inputs,
            label lengths that do not match the features, no valid query, unknown
            metric, device or ranking, ``max_rank`` / ``chunk_size`` / ``memory_budget``
            not a positive integer.
    """
    metric = check_metric(metric)
    max_rank = check_int(max_rank, "max_rank")
    memory_budget = check_int(memory_budget, "memory_budget")
    dev = compute_device(device, qf, gf)
    ranking = check_ranking(ranking, dev)
    # Rescaled first when float32 cannot hold their scale; zero rows refused (cosine).
    qf, _, gf, g_sq = as_feature_pair(qf, gf, dev, metric)
    check_same_dim(qf, gf)
    nq, ng = qf.shape[0], gf.shape[0]
    q_pids, g_pids, q_camids, g_camids = _labels(
        q_pids, g_pids, q_camids, g_camids, nq, ng, "row of qf", "row of gf"
    )
    lookup = PositiveLookup(g_pids, g_camids)
    valid, width = _valid_queries(lookup, q_pids, q_camids)
    scan = ranking == "scan"
    # Re-ranking holds a second (B, G) block (the overlap sums) beside the distances.
    rows = chunk_rows(
        ng,
        memory_budget,
        chunk_size,
        blocks=2 if rerank else 1,
        slots=width if scan else 0,
        entry_bytes=0 if scan else BYTES_PER_SORTED_ENTRY,
    )
    max_cand = group_entries(memory_budget)
    if scan:
        acc = _Accumulator(nq, max_rank, ng)
    else:
        acc = _DeviceAccumulator((q_pids, g_pids, q_camids, g_camids), valid, max_rank, dev)

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
            # The sort path slices the query indices already on the device.
            qrows = torch.from_numpy(idx).to(dev) if scan else acc.valid[s : s + rows]
            if rerank:
                dist = source.block(qrows, out=buf)
            else:
                # Only valid queries get a distance row; the rest are skipped anyway.
                dist = source(qf.index_select(0, qrows), out=buf)
            if scan:
                acc.rank_block(lookup, (q_pids, q_camids), idx, dist, max_cand)
            else:
                acc.rank_block(qrows, dist)
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
    ranking: str = "auto",
) -> dict:
    """``evaluate`` on a precomputed (Q, G) distance matrix (smaller = closer).

    Same protocol, tie rule, ``ranking`` choices and result dict as ``evaluate``; the
    matrix is read in float32 blocks of queries and never modified. ``+inf`` entries
    are allowed (ranked last, ties by gallery index); NaN is rejected.
    """
    max_rank = check_int(max_rank, "max_rank")
    memory_budget = check_int(memory_budget, "memory_budget")
    dev = compute_device(device, distmat)
    ranking = check_ranking(ranking, dev)
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
    valid, width = _valid_queries(lookup, q_pids, q_camids)
    scan = ranking == "scan"
    rows = chunk_rows(
        ng,
        memory_budget,
        chunk_size,
        slots=width if scan else 0,
        entry_bytes=0 if scan else BYTES_PER_SORTED_ENTRY,
    )
    max_cand = group_entries(memory_budget)
    if scan:
        acc = _Accumulator(nq, max_rank, ng)
    else:
        acc = _DeviceAccumulator((q_pids, g_pids, q_camids, g_camids), valid, max_rank, dev)
    with torch.inference_mode():
        for s in range(0, valid.size, rows):
            idx = valid[s : s + rows]
            if not scan and dm.device == dev:
                sel = acc.valid[s : s + rows]  # already there: no upload per block
            else:
                sel = torch.from_numpy(idx).to(dm.device)
            block = dm.index_select(0, sel).to(device=dev, dtype=torch.float32)
            if scan:
                if bool(torch.isnan(block).any()):
                    raise ValueError("distmat contains NaN values")
                acc.rank_block(lookup, (q_pids, q_camids), idx, block, max_cand)
            else:
                torch.logical_or(acc.saw_nan, torch.isnan(block).any(), out=acc.saw_nan)
                acc.rank_block(acc.valid[s : s + rows], block.contiguous())
        if not scan and bool(acc.saw_nan):
            raise ValueError("distmat contains NaN values")
    return acc.result()


def check_ranks(ranks) -> tuple[int, ...]:
    """``ranks`` (an int or a sequence of them, e.g. ``(1, 5, 10)``) as a tuple of ints >= 1.

    Check ranks before an evaluation: ``evaluate`` then needs ``max_rank >= max(ranks)``.
    """
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = (ranks,)
    try:
        values = list(ranks)
    except TypeError:
        raise ValueError(f"ranks must be integers >= 1, got {ranks!r}") from None
    if not values:
        raise ValueError("ranks is empty: give at least one rank (e.g. 1)")
    return tuple(check_int(r, "rank") for r in values)


def cmc_at(result: dict, ranks) -> dict[int, float]:
    """CMC values at 1-based ``ranks`` from an ``evaluate`` / ``evaluate_distmat`` result.

    Args:
        result: the dict those return (uses ``cmc`` and ``max_rank``).
        ranks: ints >= 1, e.g. ``(1, 5, 10, 20)``.

    Returns:
        {rank: fraction of valid queries with a positive within that rank}. A rank
        beyond a smaller gallery (``len(cmc) < rank <= max_rank``) gets the last CMC
        value, which is exact: with G gallery entries every positive ranks within G.

    Raises:
        ValueError: a rank < 1 or not an integer, or above the ``max_rank`` the result
            was computed with (evaluate again with ``max_rank >= max(ranks)``).
    """
    ranks = check_ranks(ranks)
    cmc = np.asarray(result["cmc"])
    max_rank = int(result.get("max_rank", len(cmc)))
    too_high = [r for r in ranks if r > max_rank]
    if too_high:
        raise ValueError(
            f"rank {too_high[0]} is above the max_rank {max_rank} this result was computed "
            f"with; evaluate with max_rank >= {max(ranks)}"
        )
    return {r: float(cmc[min(r, len(cmc)) - 1]) for r in ranks}
