"""reid_dhm.retrieval.evaluate: torchreid agreement, tie rule, skip rule, chunking, bad input."""

import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from reid_dhm.retrieval import check_ranks, cmc_at, evaluate, evaluate_distmat
from reid_dhm.retrieval.ranking import PositiveLookup, _positive_ranks_numpy, _positive_ranks_torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torchreid warns that its Cython evaluator is missing
    from torchreid.reid.metrics.distance import compute_distance_matrix
    from torchreid.reid.metrics.rank import evaluate_rank


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Market-1501 protocol with a STABLE argsort: ties go to the earlier gallery entry."""
    order = np.argsort(distmat, axis=1, kind="stable")
    aps, inps, cmcs = [], [], []
    for i in range(distmat.shape[0]):
        o = order[i]
        keep = ~((g_pids[o] == q_pids[i]) & (g_camids[o] == q_camids[i]))
        hits = (g_pids[o][keep] == q_pids[i]).astype(np.int64)
        if not hits.any():
            aps.append(np.nan)
            inps.append(np.nan)
            continue
        cum = hits.cumsum()
        aps.append((cum / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum())
        last = np.flatnonzero(hits).max()
        inps.append(cum[last] / (last + 1))
        cmcs.append(np.minimum(cum, 1)[: min(max_rank, distmat.shape[1])])
    cmc = np.asarray(cmcs, dtype=np.float32).sum(0) / np.float32(len(cmcs))
    return np.array(aps), np.array(inps), cmc


def random_problem(seed, nq=40, ng=300, dim=24, ids=25, cams=4):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, ids, nq)
    g_pids = rng.integers(0, ids, ng)
    q_camids = rng.integers(0, cams, nq)
    g_camids = rng.integers(0, cams, ng)
    qf = rng.standard_normal((nq, dim)).astype(np.float32)
    gf = rng.standard_normal((ng, dim)).astype(np.float32)
    return qf, gf, q_pids, g_pids, q_camids, g_camids


def torchreid_eval(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, max_rank=50):
    dist = compute_distance_matrix(torch.as_tensor(qf), torch.as_tensor(gf), metric).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmc, mAP = evaluate_rank(
            dist, q_pids, g_pids, q_camids, g_camids, max_rank, use_cython=False
        )
    return dist, cmc, mAP


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_torchreid(seed, metric):
    prob = random_problem(seed)
    dist, cmc, mAP = torchreid_eval(*prob, metric)
    out = evaluate(*prob, metric=metric)
    assert abs(out["mAP"] - mAP) < 1e-6
    np.testing.assert_array_equal(out["cmc"], cmc)
    assert out["cmc"].dtype == np.float32 and out["cmc"].shape == (50,)
    ap, inp, _ = reference(dist, *prob[2:])
    np.testing.assert_allclose(out["AP"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["INP"], inp, rtol=0, atol=1e-12)
    assert out["mINP"] == pytest.approx(np.nanmean(inp), abs=1e-12)
    assert out["num_valid_queries"] == int(np.isfinite(ap).sum())


def test_accepts_tensors_and_lists():
    qf, gf, qp, gp, qc, gc = random_problem(5)
    a = evaluate(qf, gf, qp, gp, qc, gc)
    b = evaluate(
        torch.from_numpy(qf),
        torch.from_numpy(gf).double(),
        torch.from_numpy(qp),
        list(gp),
        qc.astype(np.int32),
        torch.from_numpy(gc),
        device="cpu",
    )
    assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]
    np.testing.assert_array_equal(a["cmc"], b["cmc"])


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_ties_follow_gallery_order(chunk):
    # Integer features with few distinct values: most distances tie exactly (and are
    # computed exactly in float32), so the tie rule decides every AP.
    rng = np.random.default_rng(7)
    qf = rng.integers(0, 3, (30, 4)).astype(np.float32)
    gf = rng.integers(0, 3, (400, 4)).astype(np.float32)
    qp, gp = rng.integers(0, 12, 30), rng.integers(0, 12, 400)
    qc, gc = rng.integers(0, 3, 30), rng.integers(0, 3, 400)
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    assert len(np.unique(dist)) < 20  # really tie-heavy
    ap, inp, cmc = reference(dist, qp, gp, qc, gc)
    for out in (
        evaluate(qf, gf, qp, gp, qc, gc, chunk_size=chunk),
        evaluate_distmat(dist, qp, gp, qc, gc, chunk_size=chunk),
        evaluate_distmat(dist, qp, gp, qc, gc, memory_budget=4096),  # 1-row candidate groups
    ):
        np.testing.assert_allclose(out["AP"], ap, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out["INP"], inp, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(out["cmc"], cmc)


def test_tie_rule_by_hand():
    # One query, two gallery entries at the same distance: the earlier one ranks first.
    qf = np.zeros((1, 2), np.float32)
    gf = np.array([[1, 0], [0, 1]], np.float32)
    cams = dict(q_camids=[0], g_camids=[1, 1])
    first = evaluate(qf, gf, [5], [5, 9], **cams)  # positive first in the gallery
    second = evaluate(qf, gf, [5], [9, 5], **cams)  # positive second
    assert first["mAP"] == 1.0 and second["mAP"] == 0.5
    assert first["cmc"][0] == 1.0 and second["cmc"][0] == 0.0
    # -0.0 and +0.0 are the same distance.
    dm = np.array([[0.0, -0.0, 0.0]], np.float32)
    out = evaluate_distmat(dm, [1], [2, 1, 1], [0], [1, 1, 1])
    assert out["AP"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_queries_without_valid_positive_are_skipped():
    qf, gf, qp, gp, qc, gc = random_problem(11, ids=10)
    gc = gc.copy()
    # Query 0's identity only appears in the gallery under the query's own camera.
    qp = qp.copy()
    qp[0] = 99
    gp = gp.copy()
    gp[:3] = 99
    gc[:3] = qc[0]
    # Query 1's identity is absent from the gallery.
    qp[1] = 123
    _, cmc, mAP = torchreid_eval(qf, gf, qp, gp, qc, gc, "euclidean")
    out = evaluate(qf, gf, qp, gp, qc, gc)
    assert not out["valid"][0] and not out["valid"][1]
    assert np.isnan(out["AP"][0]) and np.isnan(out["INP"][1])
    assert out["num_valid_queries"] == out["valid"].sum() == len(qp) - 2
    assert abs(out["mAP"] - mAP) < 1e-6
    np.testing.assert_array_equal(out["cmc"], cmc)


def test_distractors_pid0_stay_in_gallery():
    # Gallery pid-0 distractors identical to the query outrank its true match.
    qf = np.array([[0.0, 0.0]], np.float32)
    gf = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    out = evaluate(qf, gf, [4], [0, 0, 4], [1], [2, 2, 2])
    assert out["AP"][0] == pytest.approx(1 / 3)
    assert out["INP"][0] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(out["cmc"], np.float32([0, 0, 1]))


def test_same_camera_junk_is_removed_not_ranked():
    # The same-pid same-camera entry is nearest; it must vanish, not count as a miss.
    qf = np.zeros((1, 2), np.float32)
    gf = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]], np.float32)
    out = evaluate(qf, gf, [3], [3, 3, 8], [1], [1, 2, 2])
    assert out["mAP"] == 1.0 and out["cmc"][0] == 1.0


def test_chunking_gives_identical_results():
    prob = random_problem(21, nq=37, ng=211)
    full = evaluate(*prob)
    for kw in ({"chunk_size": 1}, {"chunk_size": 5}, {"memory_budget": 2000}):
        out = evaluate(*prob, **kw)
        np.testing.assert_array_equal(out["AP"], full["AP"])
        np.testing.assert_array_equal(out["INP"], full["INP"])
        np.testing.assert_array_equal(out["cmc"], full["cmc"])


def test_max_rank_clipped_to_gallery_size():
    qf, gf, qp, gp, _, _ = random_problem(3, nq=10, ng=12, ids=3)
    # No junk here: torchreid itself fails when junk removal leaves < max_rank entries.
    prob = (qf, gf, qp, gp, np.zeros(10, int), np.ones(12, int))
    _, cmc, mAP = torchreid_eval(*prob, "euclidean", max_rank=50)
    out = evaluate(*prob, max_rank=50)
    assert out["cmc"].shape == (12,)
    np.testing.assert_array_equal(out["cmc"], cmc)
    assert evaluate(*prob, max_rank=1)["cmc"].shape == (1,)
    # With junk removed, CMC stays defined (1 once the first hit is reached).
    junky = evaluate(qf, gf, qp, gp, np.zeros(10, int), np.zeros(12, int) + (gp % 2))
    assert junky["cmc"].shape == (12,) and junky["cmc"][-1] == 1.0


def test_evaluate_distmat_matches_evaluate():
    prob = random_problem(9)
    dist = compute_distance_matrix(torch.from_numpy(prob[0]), torch.from_numpy(prob[1]))
    before = dist.clone()
    a = evaluate_distmat(dist, *prob[2:])
    assert torch.equal(dist, before)  # the caller's matrix is not modified
    b = evaluate(*prob)
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])


def test_rerank_matches_torchreid():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.utils.rerank import re_ranking as torchreid_re_ranking
    rng = np.random.default_rng(4)
    centers = rng.standard_normal((20, 16))
    qp, gp = rng.integers(0, 20, 50), rng.integers(0, 20, 250)
    qc, gc = rng.integers(0, 3, 50), rng.integers(0, 3, 250)
    qf = torch.tensor(centers[qp] + 0.8 * rng.standard_normal((50, 16)), dtype=torch.float32)
    gf = torch.tensor(centers[gp] + 0.8 * rng.standard_normal((250, 16)), dtype=torch.float32)
    for metric in ("euclidean", "cosine"):
        qg, qq, gg = (compute_distance_matrix(a, b, metric).numpy() for a, b in
                      ((qf, gf), (qf, qf), (gf, gf)))  # fmt: skip
        dist = torchreid_re_ranking(qg, qq, gg, k1=20, k2=6, lambda_value=0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmc, mAP = evaluate_rank(dist, qp, gp, qc, gc, 50, use_cython=False)
        out = evaluate(qf, gf, qp, gp, qc, gc, metric=metric, rerank=True)
        assert abs(out["mAP"] - mAP) < 1e-6
        np.testing.assert_array_equal(out["cmc"], cmc)
        chunked = evaluate(qf, gf, qp, gp, qc, gc, metric=metric, rerank=True, chunk_size=7)
        np.testing.assert_array_equal(chunked["AP"], out["AP"])


# ------------------------------------------------------------------------- bad input
def _ok():
    qf, gf, qp, gp, qc, gc = random_problem(0, nq=6, ng=30, ids=4)
    return dict(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)


def _nan(a):
    a = a.copy()
    a[2, 3] = np.nan
    return a


def _inf(a):
    a = a.copy()
    a[1, 0] = -np.inf
    return a


def _empty(side):
    return lambda k: {**k, f"{side}f": k[f"{side}f"][:0], f"{side}_pids": [], f"{side}_camids": []}


BAD = {
    "nan query": (lambda k: {**k, "qf": _nan(k["qf"])}, r"qf contains NaN or Inf"),
    "inf gallery": (lambda k: {**k, "gf": _inf(k["gf"])}, r"gf contains NaN or Inf"),
    "huge values": (lambda k: {**k, "gf": k["gf"] * 1e20}, r"gf row \d+ has values too large"),
    "dims differ": (lambda k: {**k, "gf": k["gf"][:, :-1]}, r"feature dimensions differ"),
    "empty query": (_empty("q"), "qf is empty"),
    "empty gallery": (_empty("g"), "gf is empty"),
    "1-D features": (lambda k: {**k, "qf": k["qf"][0]}, r"qf must be 2-D"),
    "q_pids length": (
        lambda k: {**k, "q_pids": k["q_pids"][:-1]},
        r"q_pids has 5 entries, expected one per row of qf \(6\)",
    ),
    "g_camids length": (
        lambda k: {**k, "g_camids": k["g_camids"][:3]},
        r"g_camids has 3 entries, expected one per row of gf",
    ),
    "float pids": (lambda k: {**k, "g_pids": k["g_pids"] + 0.5}, r"g_pids must hold integers"),
    "no valid query": (
        lambda k: {**k, "g_camids": np.zeros(30, int), "q_camids": np.zeros(6, int)},
        r"no valid query",
    ),
    "unknown metric": (lambda k: {**k, "metric": "manhattan"}, r"unknown metric 'manhattan'"),
    "max_rank 0": (lambda k: {**k, "max_rank": 0}, r"max_rank must be an integer >= 1, got 0"),
    "max_rank float": (lambda k: {**k, "max_rank": 5.0}, r"max_rank must be an integer"),
    "unknown device": (lambda k: {**k, "device": "tpu9"}, r"unknown device 'tpu9'"),
    "mps device": (lambda k: {**k, "device": "mps"}, r"device 'mps' is not supported here"),
    "float budget": (
        lambda k: {**k, "memory_budget": 1e6},
        r"memory_budget must be an integer >= 1, got 1000000.0",
    ),
    "zero budget": (lambda k: {**k, "memory_budget": 0}, r"memory_budget must be an integer"),
    "chunk_size 0": (lambda k: {**k, "chunk_size": 0}, r"chunk_size must be an integer >= 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line_value_error(case):
    make, pattern = BAD[case]
    with pytest.raises(ValueError, match=pattern) as err:
        evaluate(**make(_ok()))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_cuda_requested_without_gpu(device):
    # 'gpu' is the same spelling GalleryIndex accepts: a missing GPU, not an unknown name.
    with pytest.raises(ValueError, match=f"device '{device}' requested but torch sees no CUDA"):
        evaluate(**_ok(), device=device)


def test_bad_distmat():
    k = _ok()
    labels = (k["q_pids"], k["g_pids"], k["q_camids"], k["g_camids"])
    dm = np.ones((6, 30), np.float32)
    with pytest.raises(ValueError, match="distmat contains NaN"):
        evaluate_distmat(_nan(dm), *labels)
    with pytest.raises(ValueError, match="must be 2-D"):
        evaluate_distmat(dm[0], *labels)
    with pytest.raises(
        ValueError, match=r"g_pids has 30 entries, expected one per distmat column \(29\)"
    ):
        evaluate_distmat(dm[:, :29], *labels)


def both_paths(dist, qp, gp, qc, gc, group=1):
    """(npos, ranks) of the numpy path (CPU) and the torch path (CUDA; run on CPU here)."""
    gidx, is_pos, is_junk = PositiveLookup(np.asarray(gp), np.asarray(gc)).block(
        np.asarray(qp), np.asarray(qc)
    )
    a = _positive_ranks_numpy(dist.copy(), gidx, is_pos, is_junk, group)
    t = [torch.from_numpy(x) for x in (dist.copy(), gidx, is_pos, is_junk)]
    b = tuple(x.numpy() for x in _positive_ranks_torch(*t, group))
    return a, b


def test_junk_is_removed_when_a_positive_is_inf():
    # Junk (entry 0: same pid, same camera) must not rank, even at the hardest
    # positive's distance +inf; a non-junk +inf entry ties with the +inf positive and
    # ranks by gallery order (entry 1 before positive 3, negative 4 after it).
    dm = np.array([[np.inf, np.inf, 0.5, np.inf, np.inf]], np.float32)
    labels = ([1], [1, 2, 1, 1, 3], [0], [0, 1, 1, 1, 1])
    for npos, ranks in both_paths(dm, *labels):
        assert npos.tolist() == [2] and ranks.tolist() == [1, 3]
    assert evaluate_distmat(dm, *labels)["AP"][0] == pytest.approx((1 + 2 / 3) / 2)
    # The audited case: torchreid (junk removed before ranking) gives AP 1/2.
    dm = np.array([[0.5, 1.0, np.inf]], np.float32)
    labels = ([1], [1, 2, 1], [0], [0, 1, 1])
    assert evaluate_distmat(dm, *labels)["AP"][0] == 0.5
    for _npos, ranks in both_paths(dm, *labels):
        assert ranks.tolist() == [2]


@pytest.mark.parametrize("seed", [0, 1])
def test_inf_distances_match_stable_sort(seed):
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 3, (30, 200)).astype(np.float32)
    dist[rng.random(dist.shape) < 0.3] = np.inf  # junk, positives and negatives at +inf
    qp, gp = rng.integers(0, 6, 30), rng.integers(0, 6, 200)
    qc, gc = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    ap, inp, cmc = reference(dist, qp, gp, qc, gc)
    out = evaluate_distmat(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(out["AP"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["INP"], inp, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["cmc"], cmc)
    (npos_a, ranks_a), (npos_b, ranks_b) = both_paths(dist, qp, gp, qc, gc, group=7)
    np.testing.assert_array_equal(npos_a, npos_b)
    np.testing.assert_array_equal(ranks_a, ranks_b)


def test_memory_budget_covers_per_pid_arrays():
    # A gallery of one identity: each query's (B, C) per-pid arrays are as wide as the
    # gallery and cost many times the distance row, so the block size must count them
    # (with only the distance rows counted this peaked at ~20x the budget).
    rng = np.random.default_rng(3)
    nq, ng, budget = 200, 4000, 4 * 2**20
    dm = rng.random((nq, ng), dtype=np.float32)
    qc, gc = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    tracemalloc.start()
    try:
        out = evaluate_distmat(dm, np.ones(nq, int), np.ones(ng, int), qc, gc, memory_budget=budget)
        peak = tracemalloc.get_traced_memory()[1]  # numpy allocations (the ranking's)
    finally:
        tracemalloc.stop()
    assert out["num_valid_queries"] == nq
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB for a {budget / 2**20:.0f} MiB budget"
    full = evaluate_distmat(dm, np.ones(nq, int), np.ones(ng, int), qc, gc)
    np.testing.assert_array_equal(out["AP"], full["AP"])


def test_cmc_at_ranks():
    qf, gf, qp, gp, _, _ = random_problem(3, nq=10, ng=12, ids=3)
    res = evaluate(qf, gf, qp, gp, np.zeros(10, int), np.ones(12, int), max_rank=50)
    assert res["max_rank"] == 50 and res["cmc"].shape == (12,)
    got = cmc_at(res, [1, 5, 12, 20, 50])
    assert list(got) == [1, 5, 12, 20, 50]
    assert got[1] == float(res["cmc"][0]) and got[5] == float(res["cmc"][4])
    # Beyond the 12-image gallery every positive is within rank 12: the CMC is flat.
    assert got[20] == got[50] == got[12] == 1.0
    with pytest.raises(ValueError, match="rank 60 is above the max_rank 50"):
        cmc_at(res, [1, 60])
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        cmc_at(res, [0, 5])  # would silently read cmc[-1]
    assert check_ranks(np.int64(5)) == (5,) and check_ranks([1, 5]) == (1, 5)
    for bad, pattern in (([], "ranks is empty"), ([2.0], "got 2.0"), (None, "ranks must be")):
        with pytest.raises(ValueError, match=pattern):
            check_ranks(bad)


@pytest.mark.parametrize("tie_heavy", [False, True])
def test_torch_path_matches_numpy_path(tie_heavy):
    # CUDA runs the torch implementation; it runs on CPU tensors too, so check it here.
    rng = np.random.default_rng(12)
    if tie_heavy:
        dist = rng.integers(0, 4, (40, 500)).astype(np.float32)
        dist[:, ::7] = -0.0  # negative zeros tie with the zeros
    else:
        dist = rng.standard_normal((40, 500)).astype(np.float32)
    qp, gp = rng.integers(0, 15, 40), rng.integers(0, 15, 500)
    qc, gc = rng.integers(0, 3, 40), rng.integers(0, 3, 500)
    gidx, is_pos, is_junk = PositiveLookup(gp, gc).block(qp, qc)
    for group in (1, 7, 40):
        a = _positive_ranks_numpy(dist.copy(), gidx, is_pos, is_junk, group)
        t = [torch.from_numpy(x) for x in (dist.copy(), gidx, is_pos, is_junk)]
        b = _positive_ranks_torch(*t, group)
        np.testing.assert_array_equal(a[0], b[0].numpy())
        np.testing.assert_array_equal(a[1], b[1].numpy())
    ap, _, _ = reference(dist, qp, gp, qc, gc)
    out = evaluate_distmat(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(out["AP"], ap, rtol=0, atol=1e-12)
