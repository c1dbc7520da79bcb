"""k-reciprocal re-ranking against torchreid's reference implementation."""

import warnings

import numpy as np
import pytest
import torch

from reid_dhm.retrieval import KReciprocalReranker, re_ranking

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.metrics.distance import compute_distance_matrix
    from torchreid.reid.utils.rerank import re_ranking as torchreid_re_ranking


def clustered(seed, nq=30, ng=150, dim=16):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, dim))
    qf = centers[rng.integers(0, 12, nq)] + 0.6 * rng.standard_normal((nq, dim))
    gf = centers[rng.integers(0, 12, ng)] + 0.6 * rng.standard_normal((ng, dim))
    return torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32)


def matrices(qf, gf, metric):
    return tuple(
        compute_distance_matrix(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0), (3, 4, 1.0)])
def test_dense_api_matches_torchreid(metric, k1, k2, lam):
    qg, qq, gg = matrices(*clustered(1), metric)
    ref = torchreid_re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    ours = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_feature_blocks_match_torchreid(metric):
    qf, gf = clustered(2)
    ref = torchreid_re_ranking(*matrices(qf, gf, metric))
    # A tiny memory budget forces many row blocks in the neighbour pass.
    rr = KReciprocalReranker(qf, gf, metric, memory_budget=20_000)
    blocks = [rr.block(torch.arange(s, min(30, s + 7))) for s in range(0, 30, 7)]
    np.testing.assert_allclose(torch.cat(blocks).numpy(), ref, rtol=0, atol=1e-5)


def test_hnsw_neighbours_on_small_data_are_exact():
    # HNSW finds the true neighbours of a small set and the row-max sample covers every
    # item, so the approximate path reproduces the exact result here.
    qf, gf = clustered(3)
    ref = torchreid_re_ranking(*matrices(qf, gf, "euclidean"))
    rr = KReciprocalReranker(qf, gf, "euclidean", neighbors="hnsw")
    np.testing.assert_allclose(rr.block(torch.arange(30)).numpy(), ref, rtol=0, atol=1e-5)


def test_tiny_sets_smaller_than_k1():
    qf, gf = clustered(4, nq=3, ng=6)
    ref = torchreid_re_ranking(*matrices(qf, gf, "euclidean"))
    np.testing.assert_allclose(re_ranking(*matrices(qf, gf, "euclidean")), ref, atol=1e-5)
    rr = KReciprocalReranker(qf, gf, "euclidean")
    np.testing.assert_allclose(rr.block(torch.arange(3)).numpy(), ref, atol=1e-5)


def test_bad_parameters():
    qg, qq, gg = matrices(*clustered(5, nq=4, ng=8), "euclidean")
    with pytest.raises(ValueError, match="k2 <= k1 \\+ 1"):
        re_ranking(qg, qq, gg, k1=2, k2=6)
    with pytest.raises(ValueError, match="k1 must be an integer >= 1"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="lambda_value must be in \\[0, 1\\]"):
        re_ranking(qg, qq, gg, lambda_value=1.5)
    with pytest.raises(ValueError, match="shapes disagree"):
        re_ranking(qg, qq[:3, :3], gg)
    with pytest.raises(ValueError, match="neighbors must be 'exact' or 'hnsw'"):
        KReciprocalReranker(*clustered(5, nq=4, ng=8), neighbors="ivf")


def test_topk_is_the_head_of_the_stably_sorted_rows():
    qf, gf = clustered(6)
    ref = torchreid_re_ranking(*matrices(qf, gf, "cosine"))
    order = np.argsort(ref, axis=1, kind="stable")[:, :7]
    rr = KReciprocalReranker(qf, gf, "cosine")
    for budget in (512 * 2**20, 20 * 150 * 4):  # one block; blocks of 4 queries
        dist, idx = rr.topk(7, memory_budget=budget)
        assert dist.shape == idx.shape == (30, 7) and idx.dtype == torch.int64
        np.testing.assert_array_equal(idx.numpy(), order)
        np.testing.assert_allclose(dist.numpy(), np.take_along_axis(ref, order, 1), atol=1e-5)
    assert rr.topk(1000)[1].shape == (30, 150)  # k clipped to the gallery
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        rr.topk(0)
    with pytest.raises(ValueError, match="memory_budget must be an integer >= 1, got 1000000.0"):
        KReciprocalReranker(qf, gf, memory_budget=1e6)
