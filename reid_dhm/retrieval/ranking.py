"""Rank of every positive in a block of distance rows, without sorting the rows.

mAP, CMC and mINP depend only on the 1-based rank of each positive among the kept
gallery entries (junk removed). For a row with positives p_0 < ... < p_{m-1} in
(distance, gallery index) order, let bucket(j) be the number of positives strictly
before gallery entry j in that order. Then

    rank(p_k) = #{kept j : bucket(j) <= k}

(p_k itself is in bucket k). Only entries not farther than the hardest positive can
have bucket <= m-1, so the work after the matrix product is one comparison pass over
the block, a ``nonzero`` over it, and a binary search of each surviving candidate
among the block's positives (keyed by row), then a histogram and a cumulative sum.

Tie rule: entries at exactly the same distance are ordered by gallery index (the
earlier gallery entry ranks first), i.e. the order of a stable sort of the row.

Two implementations share that rule:

* the scan above (``positive_ranks``): numpy on CPU, where it is within ~1.1x of the
  matrix product; its candidate lists have data-dependent sizes (``nonzero``), which on
  a GPU means a host round trip per block;
* ``sorted_rank_stats``: a stable sort of each row's order keys and a few full-width
  passes, every shape fixed by (B, G), so a CUDA block is queued without one host read.
  A GPU sorts a block in about the time of its matrix product, so this sits near the
  "distance + sort" floor there; it runs on CPU tensors too (the tests compare it with
  the scan).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_I64_MAX = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF
# Memory accounting (peak bytes, measured with tracemalloc on the numpy path, where a
# one-identity gallery makes every entry both a slot and a candidate; the torch path
# makes the same arrays):
# * per (row, slot) of the (B, C) per-pid arrays, C = the largest number of gallery
#   entries sharing a query's pid: ``PositiveLookup.block``'s 10 bytes plus the
#   positives' sort keys and their temporaries (~37 measured);
BYTES_PER_SLOT = 48
# * per candidate binary-searched at once: keys, slots and their temporaries (~41);
_BYTES_PER_CANDIDATE = 48
# * per distance entry of a row group scanned for candidates, in the worst case that
#   every entry is one: a mask byte and an 8-byte index, plus the binary search's
#   temporaries, done in slices of at most 1/8 of the group's entries.
_SLICE_FRACTION = 8
BYTES_PER_ENTRY = 9 + _BYTES_PER_CANDIDATE // _SLICE_FRACTION
# Largest slice (~50 MB of temporaries): longer ones gain nothing.
_MAX_SLICE = 1 << 20
# * per distance entry of a block ranked by ``sorted_rank_stats``, beside the block:
#   three bool masks (3), the sort's int32 values and int64 indices (12) and the sort's
#   own double buffers (~12), the gathered hits (1) and the float64 running count (8).
BYTES_PER_SORTED_ENTRY = 40
_I32_MAX = torch.iinfo(torch.int32).max


def _order_key_np(d: np.ndarray) -> np.ndarray:
    """``order_key`` for a float32 numpy array."""
    bits = (d + np.float32(0.0)).view(np.int32)
    np.bitwise_xor(bits, 0x7FFFFFFF, out=bits, where=bits < 0)
    return bits.astype(np.int64)


def order_key(d: Tensor) -> Tensor:
    """Map float32 ``d`` to int64 in [-2^31, 2^31) with the same order; -0.0 == +0.0.

    The IEEE bit pattern read as int32 is monotone for non-negative floats and reversed
    for negative ones; flipping the magnitude bits of negatives makes it monotone.
    """
    d = (d + 0.0).contiguous()  # -0.0 + 0.0 == +0.0: the two zeros get one key
    bits = d.view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64)


def order_key32_(d: Tensor) -> Tensor:
    """``d`` (float32, contiguous) overwritten by int32 keys with the same order; returns
    the int32 view. -0.0 == +0.0; ``+inf`` (0x7F800000) sorts below ``INT32_MAX``.
    """
    bits = d.add_(0.0).view(torch.int32)  # -0.0 + 0.0 == +0.0: the two zeros get one key
    # Arithmetic shift: all ones for negative floats, whose magnitude bits are flipped.
    return bits.bitwise_xor_((bits >> 31).bitwise_and_(0x7FFFFFFF))


def sorted_rank_stats(
    dist: Tensor, q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row AP, INP and first-positive rank by a stable sort, all on ``dist``'s device.

    No shape depends on the data and nothing is read back to the host, so on CUDA the
    whole block is queued asynchronously. Same protocol and tie rule as the scan
    (``positive_ranks`` + ``metrics``): junk (same pid and camera) is removed, tied
    distances rank by gallery index.

    Args:
        dist: (B, G) float32 distances, finite or +inf (no NaN), contiguous; OVERWRITTEN
            (its storage holds the sort keys).
        q_pids, q_camids: (B,) int64 labels of the block's queries, on ``dist``'s device.
        g_pids, g_camids: (G,) int64 gallery labels, on ``dist``'s device.

    Returns:
        ap, inp: (B,) float64; first: (B,) int64, the 1-based rank of the first positive.
        Every row must have a positive (``evaluate`` passes only valid queries).

    Memory beside ``dist``: about ``BYTES_PER_SORTED_ENTRY`` per entry.
    """
    ngal = dist.shape[1]
    same_pid = g_pids[None, :] == q_pids[:, None]
    same_cam = g_camids[None, :] == q_camids[:, None]
    junk = same_pid & same_cam
    pos = same_pid.logical_and_(same_cam.logical_not_())
    del same_cam
    # Junk gets the largest key: after every kept entry (even +inf), so the kept
    # entries' 1-based positions in the sorted row are their ranks.
    key = order_key32_(dist).masked_fill_(junk, _I32_MAX)
    del junk
    order = torch.sort(key, dim=1, stable=True).indices
    hits = pos.gather(1, order)
    del order, pos
    npos = hits.sum(1)
    cum = hits.cumsum(1, dtype=torch.float64)  # positives up to and including each rank
    first = (cum == 0).sum(1) + 1
    last = (cum < npos[:, None]).sum(1) + 1  # rank of the hardest positive
    ranks = torch.arange(1, ngal + 1, dtype=torch.float64, device=dist.device)
    ap = cum.div_(ranks).mul_(hits).sum(1) / npos
    return ap, npos.to(torch.float64) / last, first


class PositiveLookup:
    """Gallery entries grouped by pid, to list each query's positives and junk.

    Args:
        g_pids, g_camids: (G,) int64 numpy arrays.
    """

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        if g_pids.shape[0] >= 2**32:
            raise ValueError("galleries of 2^32 or more entries are not supported")
        self.g_camids = g_camids
        self.order = np.argsort(g_pids, kind="stable")
        self.pids, self.starts, self.counts = np.unique(
            g_pids[self.order], return_index=True, return_counts=True
        )
        # (pid, camid) pair counts, for the number of positives per query: pairs are
        # encoded as one int64, pid rank * number of cameras + camera rank.
        self.cams = np.unique(g_camids)
        pid_rank = np.searchsorted(self.pids, g_pids)
        cam_rank = np.searchsorted(self.cams, g_camids)
        keys = pid_rank * len(self.cams) + cam_rank
        self._pair_keys, self._pair_counts = np.unique(keys, return_counts=True)

    def _segments(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg = np.searchsorted(self.pids, q_pids).clip(max=len(self.pids) - 1)
        found = self.pids[seg] == q_pids
        return seg, np.where(found, self.counts[seg], 0)

    def width(self, q_pids: np.ndarray) -> int:
        """C of ``block`` for any block of these queries: their largest same-pid count."""
        return int(self._segments(q_pids)[1].max(initial=0))

    def num_positives(self, q_pids: np.ndarray, q_camids: np.ndarray) -> np.ndarray:
        """(Q,) number of gallery entries with the query's pid and another camera."""
        seg, same_pid = self._segments(q_pids)
        cam = np.searchsorted(self.cams, q_camids).clip(max=len(self.cams) - 1)
        cam_found = self.cams[cam] == q_camids
        key = seg * len(self.cams) + cam
        at = np.searchsorted(self._pair_keys, key).clip(max=len(self._pair_keys) - 1)
        hit = (same_pid > 0) & cam_found & (self._pair_keys[at] == key)
        same_cam = np.where(hit, self._pair_counts[at], 0)
        return same_pid - same_cam

    def block(
        self, q_pids: np.ndarray, q_camids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same-pid gallery entries of a block of queries.

        Returns:
            gidx: (B, C) int64 gallery indices (padding repeats a valid index),
            is_pos: (B, C) bool, same pid and another camera,
            is_junk: (B, C) bool, same pid and same camera.
        """
        seg, cnt = self._segments(q_pids)
        width = int(cnt.max()) if len(cnt) else 0
        slots = np.arange(width)
        filled = slots[None, :] < cnt[:, None]
        pos = self.starts[seg][:, None] + np.where(filled, slots[None, :], 0)
        gidx = self.order[pos.clip(max=len(self.order) - 1)]
        same_cam = self.g_camids[gidx] == q_camids[:, None]
        is_junk = filled & same_cam
        is_pos = filled & ~same_cam
        return gidx, is_pos, is_junk


def positive_ranks(
    dist: Tensor, gidx: np.ndarray, is_pos: np.ndarray, is_junk: np.ndarray, max_entries: int
) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of every positive among the kept gallery entries of each row.

    Args:
        dist: (B, G) float32 distances, finite or +-inf (no NaN); junk entries are
            overwritten with NaN, which fails every ``<=``, so junk never becomes a
            candidate, whatever the distances of the positives (even +inf).
        gidx, is_pos, is_junk: (B, C) from ``PositiveLookup.block``.
        max_entries: distance entries scanned for candidates at once (memory bound:
            ``BYTES_PER_ENTRY`` each in the worst case).

    Returns:
        npos: (B,) int64 number of positives per row;
        ranks: (P,) int64, P = npos.sum(), the ranks row after row, ascending in a row.

    Memory beside ``dist``: ``BYTES_PER_SLOT`` per (B, C) slot plus
    ``BYTES_PER_ENTRY * max_entries`` for the scan, at most.
    """
    group = max(1, max_entries // max(dist.shape[1], 1))
    span = max(1, min(_MAX_SLICE, max_entries // _SLICE_FRACTION))
    if dist.device.type == "cpu":
        # Single-threaded numpy after the matrix product: many short multi-threaded
        # torch ops each end in an OpenMP barrier, and on a busy machine every barrier
        # waits for a descheduled thread (measured several times slower than numpy on
        # a shared 2-core machine, and about as fast on an idle one).
        return _positive_ranks_numpy(dist.numpy(), gidx, is_pos, is_junk, group, span)
    dev = dist.device
    t = [torch.from_numpy(a).to(dev) for a in (gidx, is_pos, is_junk)]
    npos, ranks = _positive_ranks_torch(dist, *t, group, span)
    return npos.cpu().numpy(), ranks.cpu().numpy()


def _positive_ranks_numpy(dist, gidx, is_pos, is_junk, group, span=_MAX_SLICE):
    nrows, ngal = dist.shape
    jr, jc = np.nonzero(is_junk)
    dist[jr, gidx[jr, jc]] = np.nan  # removed: NaN is never <= the threshold below
    del jr, jc
    npos = is_pos.sum(1).astype(np.int64)
    total = int(npos.sum())
    if total == 0:
        return npos, np.zeros(0, np.int64)

    # Sort each row's positives by (distance, gallery index) in one int64 key: the
    # signed 32-bit distance key shifted up keeps its order, the index fills the low
    # bits. In place where possible: these (B, C) arrays can be as wide as the gallery.
    pdist = np.take_along_axis(dist, gidx, 1)
    # The hardest positive bounds the entries that can precede any positive.
    thresh = np.where(is_pos, pdist, -np.inf).max(1)
    key = _order_key_np(pdist)
    del pdist
    key <<= 32
    key |= gidx
    np.putmask(key, ~is_pos, np.iinfo(np.int64).max)
    key.sort(axis=1)
    key = key[np.arange(key.shape[1])[None, :] < npos[:, None]]  # (P,) row after row
    pos_gidx = key & _LOW32
    # Global key (row, distance), sorted over all P positives: one searchsorted serves
    # every row at once.
    pos_gkey = key
    pos_gkey >>= 32
    pos_gkey += 2**31
    pos_gkey += np.repeat(np.arange(nrows, dtype=np.int64) << 32, npos)
    row_end = np.cumsum(npos)

    counts = np.zeros(total + 1, dtype=np.int64)  # last bin: entries after every positive
    flat_dist = dist.reshape(-1)
    for r0 in range(0, nrows, group):
        r1 = min(nrows, r0 + group)
        flat = np.flatnonzero(dist[r0:r1] <= thresh[r0:r1, None]) + r0 * ngal
        for s in range(0, flat.size, span):
            f = flat[s : s + span]
            row = f // ngal
            ckey = (row << 32) + (_order_key_np(flat_dist.take(f)) + 2**31)
            slot = np.searchsorted(pos_gkey, ckey, side="left")
            # Equal keys mean a tie with a positive (each positive meets itself); only
            # those need the gallery-index rule, and only they can land past their
            # row's last positive (same distance as the hardest one, later index).
            tied = np.flatnonzero(pos_gkey.take(np.minimum(slot, total - 1)) == ckey)
            if tied.size:
                t_slot = slot[tied]
                hi = np.searchsorted(pos_gkey, ckey[tied], side="right")
                t_slot += _earlier_tied_np(pos_gidx, t_slot, hi, f[tied] % ngal, span)
                t_slot[t_slot >= row_end[row[tied]]] = total
                slot[tied] = t_slot
            counts += np.bincount(slot, minlength=total + 1)
    del pos_gkey, pos_gidx
    return npos, _ranks_from_counts(counts[:total], npos, row_end)


def _ranks_from_counts(counts: np.ndarray, npos: np.ndarray, row_end: np.ndarray) -> np.ndarray:
    """Rank of the k-th positive of a row = kept entries of that row in buckets <= k:
    the cumulative sum of the (P,) bucket counts, minus what earlier rows put in it."""
    start = np.minimum(row_end - npos, counts.size - 1)  # clipped: rows without positives
    first = counts[start]
    np.cumsum(counts, out=counts)
    before_row = counts[start] - first  # (B,) cumulative count before each row's bucket 0
    counts -= np.repeat(before_row, npos)
    return counts


def _positive_ranks_torch(dist, gidx, is_pos, is_junk, group, span=_MAX_SLICE):
    """``_positive_ranks_numpy`` in torch, for CUDA tensors (same steps)."""
    nrows, ngal = dist.shape
    dev = dist.device
    if bool(is_junk.any()):
        jr, jc = is_junk.nonzero(as_tuple=True)
        dist[jr, gidx[jr, jc]] = float("nan")  # removed: NaN is never <= the threshold
        del jr, jc
    npos = is_pos.sum(1)
    total = int(npos.sum())
    if total == 0:
        return npos, torch.zeros(0, dtype=torch.int64, device=dev)
    pdist = dist.gather(1, gidx)
    thresh = pdist.masked_fill(~is_pos, float("-inf")).amax(1)
    key = order_key(pdist)
    del pdist
    key.bitwise_left_shift_(32).bitwise_or_(gidx)
    key = key.masked_fill_(~is_pos, _I64_MAX).sort(dim=1).values
    key = key[torch.arange(key.shape[1], device=dev)[None, :] < npos[:, None]]
    pos_gidx = key & _LOW32
    pos_row = torch.repeat_interleave(torch.arange(nrows, device=dev), npos)
    pos_gkey = key.bitwise_right_shift_(32).add_(2**31).add_(pos_row << 32)
    del pos_row
    row_end = npos.cumsum(0)
    counts = torch.zeros(total + 1, dtype=torch.int64, device=dev)
    for r0 in range(0, nrows, group):
        r1 = min(nrows, r0 + group)
        part = dist[r0:r1]
        flat_all = (part <= thresh[r0:r1, None]).view(-1).nonzero()[:, 0]
        for s in range(0, flat_all.numel(), span):
            flat = flat_all[s : s + span]
            row = flat // ngal + r0
            ckey = (row << 32) + (order_key(part.view(-1).index_select(0, flat)) + 2**31)
            slot = torch.searchsorted(pos_gkey, ckey, side="left")
            tied = (pos_gkey.index_select(0, slot.clamp(max=total - 1)) == ckey).nonzero()[:, 0]
            if tied.numel():
                t_slot = slot.index_select(0, tied)
                hi = torch.searchsorted(pos_gkey, ckey.index_select(0, tied), side="right")
                t_col = flat.index_select(0, tied) % ngal
                t_slot += _earlier_tied(pos_gidx, t_slot, hi, t_col, span)
                past = t_slot >= row_end.index_select(0, row.index_select(0, tied))
                slot.index_copy_(0, tied, t_slot.masked_fill_(past, total))
            counts += torch.bincount(slot, minlength=total + 1)
    del pos_gkey, pos_gidx
    counts = counts[:total]
    start = (row_end - npos).clamp(max=total - 1)
    first = counts[start]
    counts = counts.cumsum(0)
    before_row = counts[start] - first
    return npos, counts.sub_(torch.repeat_interleave(before_row, npos))


def _earlier_tied(
    pos_gidx: Tensor, lo: Tensor, hi: Tensor, cand_gidx: Tensor, span: int = _MAX_SLICE
) -> Tensor:
    """For each tied candidate: positives in ``pos_gidx[lo:hi]`` with a smaller index.

    Works on (n, width) pieces of at most ``span`` entries (the candidate slice's size).
    """
    out = torch.empty_like(lo)
    width = int((hi - lo).max())
    step = max(1, span // width)
    span = torch.arange(width, device=lo.device)
    for s in range(0, lo.numel(), step):
        a, b, c = lo[s : s + step], hi[s : s + step], cand_gidx[s : s + step]
        idx = a[:, None] + span[None, :]
        inside = idx < b[:, None]
        earlier = pos_gidx[idx.clamp(max=pos_gidx.numel() - 1)] < c[:, None]
        out[s : s + step] = (earlier & inside).sum(1)
    return out


def _earlier_tied_np(pos_gidx, lo, hi, cand_gidx, span=_MAX_SLICE) -> np.ndarray:
    """``_earlier_tied`` for numpy arrays."""
    out = np.empty_like(lo)
    width = int((hi - lo).max())
    step = max(1, span // width)
    span = np.arange(width)
    for s in range(0, lo.size, step):
        a, b, c = lo[s : s + step], hi[s : s + step], cand_gidx[s : s + step]
        idx = a[:, None] + span[None, :]
        inside = idx < b[:, None]
        earlier = pos_gidx.take(np.minimum(idx, pos_gidx.size - 1)) < c[:, None]
        out[s : s + step] = (earlier & inside).sum(1)
    return out
