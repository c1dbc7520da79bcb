"""evaluate's sort path (the one CUDA runs) against its numpy scan path, run on CPU here.

Random problems with exact ties (integer distances, -0.0 beside +0.0, +inf), junk
(same pid and camera), pid -1 distractors and queries without a positive, at several
block sizes: mAP, mINP and CMC equal, per-query AP / INP to float64 rounding.
"""

import numpy as np
import pytest
import torch

from reid_dhm.retrieval import evaluate, evaluate_distmat
from reid_dhm.retrieval.metrics import RANKINGS, check_ranking
from reid_dhm.retrieval.ranking import sorted_rank_stats


def tied_problem(seed, nq=50, ng=400, ids=12, cams=3):
    """Integer-valued distances (many exact ties), labels with junk and pid -1."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 5, (nq, ng)).astype(np.float32)
    dist[:, ::9] = -0.0  # negative zeros tie with the zeros
    dist[rng.random(dist.shape) < 0.05] = np.inf
    q_pids = rng.integers(-1, ids, nq)
    g_pids = rng.integers(-1, ids, ng)
    g_pids[rng.random(ng) < 0.2] = -1  # distractors: an ordinary negative pid
    q_pids[:3] = ids + 7  # no gallery entry: skipped queries
    return dist, q_pids, g_pids, rng.integers(0, cams, nq), rng.integers(0, cams, ng)


def assert_same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["valid"], b["valid"])
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["num_valid_queries"] == b["num_valid_queries"]
    np.testing.assert_allclose(a["AP"], b["AP"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["INP"], b["INP"], rtol=0, atol=1e-12)
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12)
    assert a["mINP"] == pytest.approx(b["mINP"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_distmat_sort_equals_scan(seed, chunk):
    dist, *labels = tied_problem(seed)
    scan = evaluate_distmat(dist, *labels, ranking="scan", chunk_size=chunk)
    sort = evaluate_distmat(dist, *labels, ranking="sort", chunk_size=chunk)
    assert 0 < scan["num_valid_queries"] < dist.shape[0]  # some queries are skipped
    assert_same(sort, scan)
    # Against the block-free answer too: chunking changes nothing.
    assert_same(sort, evaluate_distmat(dist, *labels, ranking="scan", chunk_size=dist.shape[0]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [3, 50, None])
def test_features_sort_equals_scan(metric, chunk):
    rng = np.random.default_rng(4)
    nq, ng = 60, 500
    # Small-integer features: many exactly tied distances, duplicated gallery rows.
    gf = rng.integers(-1, 2, (ng, 6)).astype(np.float32)
    qf = np.concatenate([gf[:30], rng.integers(-1, 2, (nq - 30, 6)).astype(np.float32)])
    if metric == "cosine":
        qf[np.abs(qf).sum(1) == 0, 0] = 1  # no all-zero rows for cosine
        gf[np.abs(gf).sum(1) == 0, 0] = 1
    qp, gp = rng.integers(-1, 15, nq), rng.integers(-1, 15, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    kw = {"metric": metric, "chunk_size": chunk}
    scan = evaluate(qf, gf, qp, gp, qc, gc, ranking="scan", **kw)
    sort = evaluate(torch.from_numpy(qf), gf, qp, gp, qc, gc, ranking="sort", **kw)
    assert_same(sort, scan)


def test_rerank_sort_equals_scan():
    rng = np.random.default_rng(5)
    qf, gf = rng.standard_normal((20, 8)), rng.standard_normal((120, 8))
    qp, gp = rng.integers(0, 8, 20), rng.integers(0, 8, 120)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 120)
    a = evaluate(qf, gf, qp, gp, qc, gc, rerank=True, ranking="scan", chunk_size=6)
    b = evaluate(qf, gf, qp, gp, qc, gc, rerank=True, ranking="sort", chunk_size=6)
    assert_same(b, a)


def test_sorted_rank_stats_by_hand():
    # Row 0: entry 0 is junk (same pid 1, same camera 0), entries 1 and 3 tie at 0.5
    # with entry 3 a positive: entry 1 ranks first (earlier index), the positive second;
    # positive 4 at +inf ties with negative 2 (also +inf) and ranks after it: 4th.
    dist = torch.tensor([[0.0, 0.5, float("inf"), 0.5, float("inf")]])
    g_pids, g_cams = torch.tensor([1, 2, 3, 1, 1]), torch.tensor([0, 1, 1, 1, 2])
    ap, inp, first = sorted_rank_stats(dist, torch.tensor([1]), torch.tensor([0]), g_pids, g_cams)
    assert first.tolist() == [2]
    assert ap.tolist() == pytest.approx([(1 / 2 + 2 / 4) / 2])
    assert inp.tolist() == pytest.approx([2 / 4])


def test_nan_distmat_refused_on_the_sort_path():
    dist, *labels = tied_problem(0)
    dist[30, 7] = np.nan
    with pytest.raises(ValueError, match="distmat contains NaN"):
        evaluate_distmat(dist, *labels, ranking="sort", chunk_size=8)


def test_ranking_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert RANKINGS == ("auto", "scan", "sort")
    assert check_ranking("auto", cpu) == "scan" and check_ranking("auto", cuda) == "sort"
    assert check_ranking("scan", cuda) == "scan" and check_ranking("sort", cpu) == "sort"
    dist, *labels = tied_problem(0)
    with pytest.raises(ValueError, match=r"unknown ranking 'fast'; valid ones are \['auto'"):
        evaluate_distmat(dist, *labels, ranking="fast")
