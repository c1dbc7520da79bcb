"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), sparse and chunked.

Same computation as torchreid's ``re_ranking`` (``torchreid.reid.utils.rerank``), which
the torchreid engine feeds with its metric distances (squared L2 or 1 - cos):

1. base distance ``b = dist^2`` over all N = Q + G items, each row divided by its
   maximum: ``R[i, j] = b(i, j) / max_j' b(i, j')``;
2. ``V[i]``: weights ``exp(-R[i, j])`` (normalised to sum 1) on the k-reciprocal
   expansion set of i: the k1-reciprocal neighbours of i, plus the round(k1/2)-reciprocal
   set of each of them that overlaps i's set by more than 2/3;
3. query expansion (k2 > 1): ``V[i] <- mean of V[j]`` over i's k2 nearest items;
4. ``jaccard[i, j] = 1 - s / (2 - s)``, ``s = sum_k min(V[i, k], V[j, k])``;
5. ``final = (1 - lambda) * jaccard + lambda * R``.

torchreid materialises several dense N x N matrices (float32 and an int32 argsort),
about 16 N^2 bytes: 6 GB for Market-1501, 4 TB for a 515k gallery. Here only the
k1+1 nearest neighbours and row maxima are kept per item; V is sparse (CSR, O(N k1)
entries, O(N k1 k2) after query expansion), and the final (B, G) distances are made per
block of queries. Memory is therefore linear in N. Time is not: finding every item's
k1 nearest neighbours exactly needs all N^2 distances (one chunked matrix product over
the N x N pairs, O(N^2 D)), which is inherent to exact k-reciprocal re-ranking. With
``neighbors='hnsw'`` the neighbour lists come from a faiss HNSW graph instead
(approximate) and each row maximum from a fixed random sample of items plus the
neighbours (approximate: it only rescales R); everything after that is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..utils.checks import check_int
from .distance import DistanceBlocks
from .validate import as_features, check_metric, check_same_dim, compute_device

_TINY = torch.finfo(torch.float32).tiny
# Items whose base distances are sampled to estimate a row maximum (approximate mode).
_ROWMAX_SAMPLE = 8192


def _check_params(k1, k2, lambda_value) -> tuple[int, int, float]:
    k1, k2 = check_int(k1, "re-ranking k1"), check_int(k2, "re-ranking k2")
    if k2 > k1 + 1:
        raise ValueError(f"re-ranking needs k2 <= k1 + 1, got k1={k1}, k2={k2}")
    try:
        lam = float(lambda_value)
    except (TypeError, ValueError):
        lam = float("nan")  # reported below
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"re-ranking lambda_value must be in [0, 1], got {lambda_value!r}")
    return k1, k2, lam


def _expand_ranges(starts: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
    """Flat positions ``starts[s] + 0 .. lens[s]-1`` for every s, and each one's s."""
    owner = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
    first = lens.cumsum(0) - lens
    pos = torch.arange(owner.numel(), device=lens.device) - first[owner] + starts[owner]
    return pos, owner


def _reciprocal(nbr: Tensor, chunk: int) -> Tensor:
    """(N, K) bool: is i among the K nearest of its t-th nearest ``nbr[i, t]``?"""
    out = torch.empty(nbr.shape, dtype=torch.bool, device=nbr.device)
    for s in range(0, nbr.shape[0], chunk):
        f = nbr[s : s + chunk]
        me = torch.arange(s, s + f.shape[0], device=nbr.device)[:, None, None]
        out[s : s + chunk] = (nbr[f] == me).any(-1)
    return out


class _Core:
    """Steps 2-5 given each item's nearest neighbours and a way to get R(i, j).

    Args:
        nbr: (N, K) int64, each item's nearest items (itself first), K >= min(k1+1, N).
        r_pairs: ``r_pairs(i, j) -> R[i, j]`` for index vectors, float32.
        num_query: items 0..Q-1 are the queries, Q..N-1 the gallery.
    """

    def __init__(self, nbr, r_pairs, num_query, k1, k2, lambda_value, chunk):
        self.n = nbr.shape[0]
        self.nq = num_query
        self.ng = self.n - num_query
        self.lam = lambda_value
        self.dev = nbr.device
        self.chunk = chunk
        kf = min(k1 + 1, self.n)
        kh = min(int(np.around(k1 / 2.0)) + 1, self.n)  # round half to even, as numpy
        rows, cols = self._expansion_sets(nbr[:, :kf].contiguous(), nbr[:, :kh].contiguous())
        r = torch.cat(
            [
                r_pairs(rows[s : s + chunk], cols[s : s + chunk])
                for s in range(0, rows.numel(), chunk)
            ]
        )
        w = torch.exp(-r)
        total = torch.zeros(self.n, dtype=w.dtype, device=self.dev).index_add_(0, rows, w)
        vals = w / total[rows]
        indptr = self._indptr(rows)
        if k2 > 1:
            indptr, cols, vals = self._query_expansion(nbr[:, :k2], indptr, cols, vals, k2)
        self.indptr, self.cols, self.vals = indptr, cols, vals
        # Column-major view of V restricted to gallery rows: for item k, which gallery
        # rows have V[r, k] != 0 (only those reach the final (Q, G) distances).
        row_of = torch.repeat_interleave(torch.arange(self.n, device=self.dev), indptr.diff())
        gal = row_of >= num_query
        order = torch.argsort(cols[gal], stable=True)
        self.col_rows = (row_of[gal] - num_query)[order]
        self.col_vals = vals[gal][order]
        self.col_ptr = torch.zeros(self.n + 1, dtype=torch.int64, device=self.dev)
        self.col_ptr[1:] = torch.bincount(cols[gal], minlength=self.n).cumsum(0)

    def _indptr(self, rows: Tensor) -> Tensor:
        indptr = torch.zeros(self.n + 1, dtype=torch.int64, device=self.dev)
        indptr[1:] = torch.bincount(rows, minlength=self.n).cumsum(0)
        return indptr

    def _expansion_sets(self, fwd: Tensor, half_fwd: Tensor) -> tuple[Tensor, Tensor]:
        """CSR (row, col) pairs of every item's k-reciprocal expansion set, sorted."""
        recip = _reciprocal(fwd, self.chunk)
        half_sets = torch.where(_reciprocal(half_fwd, self.chunk), half_fwd, -1)
        half_size = (half_sets >= 0).sum(1).double()
        out_rows, out_cols = [], []
        step = max(1, self.chunk // (fwd.shape[1] * half_fwd.shape[1]))
        for s in range(0, self.n, step):
            f = fwd[s : s + step]
            rset = torch.where(recip[s : s + step], f, -1)  # (B, K) the k1-reciprocal set
            cand = half_sets[f]  # (B, K, H) each neighbour's half-size reciprocal set
            inside = (cand[..., None] == rset[:, None, None, :]).any(-1) & (cand >= 0)
            # Same float expression as the reference: |overlap| > 2/3 |candidate set|.
            grow = (rset >= 0) & (inside.sum(-1).double() > 2.0 / 3 * half_size[f])
            merged = torch.cat([rset, torch.where(grow[..., None], cand, -1).flatten(1)], 1)
            merged = merged.sort(dim=1).values
            dup = torch.zeros_like(merged, dtype=torch.bool)
            dup[:, 1:] = merged[:, 1:] == merged[:, :-1]
            keep = (merged >= 0) & ~dup
            row_ids = torch.arange(s, s + f.shape[0], device=self.dev)[:, None].expand_as(merged)
            out_rows.append(row_ids[keep])
            out_cols.append(merged[keep])
        return torch.cat(out_rows), torch.cat(out_cols)

    def _query_expansion(self, near: Tensor, indptr, cols, vals, k2):
        """V[i] <- mean of V[j] over i's k2 nearest items; returns the new CSR."""
        new_rows, new_cols, new_vals = [], [], []
        lens_all = indptr.diff()
        step = max(1, self.chunk // max(1, k2 * int(lens_all.max())))
        for s in range(0, self.n, step):
            src = near[s : s + step]  # (B, k2)
            starts, lens = indptr[src].flatten(), lens_all[src].flatten()
            pos, owner = _expand_ranges(starts, lens)
            row = owner // k2 + s
            key = row * self.n + cols[pos]
            uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
            summed = torch.zeros(uniq.numel(), dtype=vals.dtype, device=self.dev)
            summed.index_add_(0, inv, vals[pos])
            new_rows.append(uniq // self.n)
            new_cols.append(uniq % self.n)
            new_vals.append(summed / k2)
        rows = torch.cat(new_rows)
        return self._indptr(rows), torch.cat(new_cols), torch.cat(new_vals)

    def overlap_block(self, qrows: Tensor) -> Tensor:
        """(B, G) float32 ``s[i, j] = sum_k min(V[i, k], V[j, k])`` for query items qrows."""
        nb = qrows.numel()
        out = torch.zeros(nb * self.ng, dtype=self.vals.dtype, device=self.dev)
        starts, lens = self.indptr[qrows], self.indptr[qrows + 1] - self.indptr[qrows]
        pos, owner = _expand_ranges(starts, lens)  # V[i, k] != 0 entries of these queries
        k = self.cols[pos]
        a = self.vals[pos]
        clen = self.col_ptr[k + 1] - self.col_ptr[k]
        # Work through the (query entry x column entry) products in bounded pieces.
        cum = clen.cumsum(0)
        s = 0
        while s < k.numel():
            limit = (cum[s - 1] if s else 0) + self.chunk
            e = max(s + 1, int(torch.searchsorted(cum, limit, right=True)))
            gpos, gown = _expand_ranges(self.col_ptr[k[s:e]], clen[s:e])
            mins = torch.minimum(a[s:e][gown], self.col_vals[gpos])
            flat = owner[s:e][gown] * self.ng + self.col_rows[gpos]
            out.index_add_(0, flat, mins)
            s = e
        return out.view(nb, self.ng)

    def combine(self, r_block: Tensor, qrows: Tensor) -> Tensor:
        """Final distances in place of ``r_block`` (B, G) = R[qrows, gallery]."""
        s = self.overlap_block(qrows).to(r_block.dtype)
        jac = s.div_(s.neg().add_(2.0)).neg_().add_(1.0)  # 1 - s / (2 - s)
        return r_block.mul_(self.lam).add_(jac, alpha=1.0 - self.lam)


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
    """k-reciprocal re-ranking of dense distance matrices (torchreid's API and result).

    Args:
        q_g_dist: (Q, G), q_q_dist: (Q, Q), g_g_dist: (G, G) distances (numpy or torch).
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).

    Returns:
        (Q, G) float32 numpy array of re-ranked distances.

    Dense inputs are O((Q+G)^2) by nature; for large galleries use
    ``evaluate(..., rerank=True)`` / ``KReciprocalReranker``, which start from features.
    """
    k1, k2, lambda_value = _check_params(k1, k2, lambda_value)

    def t(x):
        return torch.as_tensor(np.asarray(x.cpu() if isinstance(x, Tensor) else x)).float()

    qg, qq, gg = t(q_g_dist), t(q_q_dist), t(g_g_dist)
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"re_ranking shapes disagree: q_g {tuple(qg.shape)}, q_q {tuple(qq.shape)}, "
            f"g_g {tuple(gg.shape)}"
        )
    full = torch.cat([torch.cat([qq, qg], 1), torch.cat([qg.T, gg], 1)], 0).pow_(2)
    if not torch.isfinite(full).all():
        raise ValueError("re_ranking distances contain NaN or Inf")
    # Reference normalisation: divide each column by its maximum, then transpose.
    r = (full / full.amax(0).clamp_min(_TINY)).T.contiguous()
    kmax = min(k1 + 1, r.shape[0])
    nbr = torch.topk(r, kmax, dim=1, largest=False, sorted=True).indices
    core = _Core(nbr, lambda i, j: r[i, j], nq, k1, k2, lambda_value, chunk=1 << 20)
    out = core.combine(r[:nq, nq:].clone(), torch.arange(nq))
    return out.numpy()


class KReciprocalReranker:
    """Re-ranked query-gallery distances from features, one block of queries at a time.

    Args:
        qf: (Q, D), gf: (G, D) float32 tensors on the compute device.
        metric: ``'euclidean'`` or ``'cosine'``: the distance that gets re-ranked (squared
            inside, as torchreid's engine does with its distance matrices).
        k1, k2, lambda_value: the paper's parameters.
        neighbors: ``'exact'`` (chunked matrix product over all (Q+G)^2 pairs) or
            ``'hnsw'`` (faiss HNSW neighbour lists, approximate; see module doc).
        memory_budget: bytes for the (B, Q+G) distance blocks of the neighbour pass.

    Memory: O((Q+G) k1 k2) for V plus the blocks; time: O((Q+G)^2 D) for 'exact'.
    """

    def __init__(
        self,
        qf,
        gf,
        metric="euclidean",
        *,
        k1=20,
        k2=6,
        lambda_value=0.3,
        neighbors="exact",
        memory_budget=512 * 2**20,
        device="auto",
    ):
        self.k1, self.k2, self.lam = _check_params(k1, k2, lambda_value)
        if neighbors not in ("exact", "hnsw"):
            raise ValueError(f"neighbors must be 'exact' or 'hnsw', got {neighbors!r}")
        self.metric = check_metric(metric)
        memory_budget = check_int(memory_budget, "memory_budget")
        dev = compute_device(device, qf, gf)
        self.qf, q_sq = as_features(qf, "qf", dev)
        self.gf, g_sq = as_features(gf, "gf", dev)
        check_same_dim(self.qf, self.gf)
        self.nq, self.ng = self.qf.shape[0], self.gf.shape[0]
        self.to_q = DistanceBlocks(self.qf, metric, q_sq)
        self.to_g = DistanceBlocks(self.gf, metric, g_sq)
        # Items = queries then gallery, in one tensor so pairs gather with one
        # index_select (a copy of the features: re-ranking is quadratic in time anyway).
        self.items = torch.cat([self.qf, self.gf])
        self.sq = torch.cat([q_sq, g_sq])
        self.inv_norm = self.sq.sqrt().clamp_min(1e-12).reciprocal()
        n = self.nq + self.ng
        kmax = min(self.k1 + 1, n)
        if neighbors == "exact":
            nbr, rowmax = self._exact_neighbours(kmax, memory_budget)
        else:
            nbr, rowmax = self._hnsw_neighbours(kmax)
        self.rowmax = rowmax.clamp_min(_TINY)
        self.core = _Core(nbr, self._r_pairs, self.nq, self.k1, self.k2, self.lam, chunk=1 << 21)

    def _base_pairs(self, i: Tensor, j: Tensor) -> Tensor:
        """Squared metric distance b(i, j) of item pairs (same formula as the blocks)."""
        dot = (self.items.index_select(0, i) * self.items.index_select(0, j)).sum(1)
        if self.metric == "euclidean":
            d = self.sq[i] + self.sq[j] - 2 * dot
        else:
            d = 1 - dot * self.inv_norm[i] * self.inv_norm[j]
        return d.square()

    def _r_pairs(self, i: Tensor, j: Tensor) -> Tensor:
        out = torch.empty(i.numel(), device=self.items.device)
        step = max(1, (64 * 2**20) // (4 * self.items.shape[1]))  # bound gathered features
        for s in range(0, i.numel(), step):
            a, b = i[s : s + step], j[s : s + step]
            out[s : s + step] = self._base_pairs(a, b) / self.rowmax[a]
        return out

    def _exact_neighbours(self, kmax: int, memory_budget: int) -> tuple[Tensor, Tensor]:
        n = self.nq + self.ng
        rows = max(1, memory_budget // (4 * n))
        nbr = torch.empty((n, kmax), dtype=torch.int64, device=self.qf.device)
        rowmax = torch.empty(n, device=self.qf.device)
        with torch.inference_mode():
            for s in range(0, n, rows):
                x = self.items[s : s + rows]
                parts, tops, idxs = [], [], []
                for offset, blocks in ((0, self.to_q), (self.nq, self.to_g)):
                    b = blocks(x).square_()
                    parts.append(b.amax(1))
                    k = min(kmax, b.shape[1])
                    v, ix = torch.topk(b, k, dim=1, largest=False, sorted=True)
                    tops.append(v)
                    idxs.append(ix + offset)
                rowmax[s : s + x.shape[0]] = torch.maximum(parts[0], parts[1])
                v, pick = torch.topk(torch.cat(tops, 1), kmax, dim=1, largest=False, sorted=True)
                nbr[s : s + x.shape[0]] = torch.cat(idxs, 1).gather(1, pick)
        return nbr, rowmax

    def _hnsw_neighbours(self, kmax: int) -> tuple[Tensor, Tensor]:
        from .index import GalleryIndex

        allf = self.items.cpu().numpy()
        index = GalleryIndex(allf.shape[1], metric=self.metric, kind="hnsw", device="cpu")
        index.add(allf)
        found = index.search(allf, kmax)
        nbr = torch.from_numpy(found.indices).to(self.qf.device)
        n = allf.shape[0]
        if (nbr < 0).any():  # HNSW returned fewer than kmax: repeat the last neighbour
            nbr = torch.where(nbr < 0, nbr[:, :1], nbr)
        gen = torch.Generator().manual_seed(0)
        sample = torch.randperm(n, generator=gen)[: min(n, _ROWMAX_SAMPLE)].to(self.qf.device)
        rowmax = torch.empty(n, device=self.qf.device)
        sampled = DistanceBlocks(self.items.index_select(0, sample), self.metric)
        for s in range(0, n, 1024):
            x = self.items[s : s + 1024]
            b = sampled(x).square_().amax(1)
            rows = torch.arange(s, s + x.shape[0], device=x.device).repeat_interleave(kmax)
            own = self._base_pairs(rows, nbr[s : s + 1024].flatten())
            rowmax[s : s + x.shape[0]] = torch.maximum(b, own.view(-1, kmax).amax(1))
        return nbr, rowmax

    def block(self, qrows: Tensor, out: Tensor | None = None) -> Tensor:
        """Re-ranked distances (B, G) float32 of the queries ``qrows`` (indices < Q)."""
        r = self.to_g(self.qf.index_select(0, qrows), out=out).square_()
        r.div_(self.rowmax[qrows][:, None])
        return self.core.combine(r, qrows)

    def topk(self, k: int, memory_budget: int = 512 * 2**20) -> tuple[Tensor, Tensor]:
        """Each query's k nearest gallery items by re-ranked distance.

        Args:
            k: neighbours per query (clipped to G).
            memory_budget: bytes for the (B, G) blocks (distances, overlaps, the sort).

        Returns:
            distances (Q, k) float32 ascending, indices (Q, k) int64 into the gallery;
            exactly tied distances keep gallery order (as ``evaluate``'s tie rule).
        """
        k = min(check_int(k, "k"), self.ng)
        # Per query row: the distances, the overlap sums, the sorted values and indices.
        rows = max(1, check_int(memory_budget, "memory_budget") // (20 * self.ng))
        dists, idxs = [], []
        with torch.inference_mode():
            for s in range(0, self.nq, rows):
                qrows = torch.arange(s, min(self.nq, s + rows), device=self.qf.device)
                d, i = torch.sort(self.block(qrows), dim=1, stable=True)
                dists.append(d[:, :k].clone())
                idxs.append(i[:, :k].clone())
        return torch.cat(dists), torch.cat(idxs)
