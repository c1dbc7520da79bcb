"""reid_dhm.retrieval.GalleryIndex on real faiss: build, search, metadata, save / load."""

import os

import numpy as np
import pytest
import torch

from reid_dhm.retrieval import GalleryIndex, SearchResult

DIM = 16
# ivf / ivfpq need enough points for k-means (39 per list, 2^nbits PQ centroids).
N = 2000


@pytest.fixture(autouse=True, scope="module")
def _single_thread_faiss():
    # Tiny indexes: one OpenMP thread avoids stalls at faiss' barriers when the
    # test machine's cores are busy with other work (k-means went 0.1 s -> 6 s).
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, DIM))
    labels = rng.integers(0, 50, N)
    x = (centers[labels] + 0.3 * rng.standard_normal((N, DIM))).astype(np.float32)
    return x, labels, rng.integers(1, 7, N), [f"img/{i:05d}.jpg" for i in range(N)]


def brute_force(x, q, metric):
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return 1 - qn @ xn.T
    return ((q[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)


KIND_PARAMS = {
    "flat": {},
    "ivf": {"nlist": 16, "nprobe": 16},  # nprobe == nlist: exhaustive, so exact
    "hnsw": {"M": 16, "efSearch": 256},
    "ivfpq": {"nlist": 8, "nprobe": 8, "m": 16, "nbits": 6},
}


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", list(KIND_PARAMS))
def test_build_search_save_load(kind, metric, data, tmp_path):
    x, pids, camids, paths = data
    index = GalleryIndex(DIM, metric=metric, kind=kind, **KIND_PARAMS[kind])
    index.add(x[:1200], pids=pids[:1200], camids=camids[:1200], paths=paths[:1200])
    if index.needs_training:
        assert not index.is_trained
        with pytest.raises(RuntimeError, match="not trained: call train"):
            index.search(x[:2], 3)
        index.train()
    index.add(
        torch.from_numpy(x[1200:]), pids=pids[1200:], camids=camids[1200:], paths=paths[1200:]
    )
    assert len(index) == N and index.is_trained

    q = x[:20]
    res = index.search(q, 5)
    assert isinstance(res, SearchResult)
    assert res.distances.shape == res.indices.shape == (20, 5)
    assert np.all(np.diff(res.distances, axis=1) >= -1e-5)  # ascending: smaller is closer
    np.testing.assert_array_equal(res.pids, pids[res.indices])
    np.testing.assert_array_equal(res.camids, camids[res.indices])
    assert res.paths[3, 0] == paths[res.indices[3, 0]]
    exact = brute_force(x, q, metric)
    truth = np.argsort(exact, axis=1)[:, :5]
    if kind == "ivfpq":  # lossy codes: the true neighbour must still be found mostly
        assert np.mean((res.indices == np.arange(20)[:, None]).any(1)) >= 0.8
    else:
        np.testing.assert_array_equal(res.indices[:, 0], np.arange(20))
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(res.indices, truth)])
        assert recall >= 0.95
        got = np.take_along_axis(exact, res.indices, 1)
        np.testing.assert_allclose(res.distances, got, rtol=1e-4, atol=1e-4)

    path = tmp_path / "gallery.idx"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.idx"]  # no temp file left over
    loaded = GalleryIndex.load(path, dim=DIM, metric=metric)
    assert (loaded.kind, loaded.metric, len(loaded)) == (kind, metric, N)
    again = loaded.search(q, 5)
    np.testing.assert_array_equal(again.indices, res.indices)
    np.testing.assert_allclose(again.distances, res.distances, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(again.paths, res.paths)


def test_metadata_optional_and_padding(data):
    x = data[0][:10]
    index = GalleryIndex(DIM, metric="euclidean")
    index.add(x)
    res = index.search(x[:2], 15)  # more neighbours than entries: padded
    assert res.pids is None and res.camids is None and res.paths is None
    assert (res.indices[:, 10:] == -1).all() and np.isinf(res.distances[:, 10:]).all()
    index.add(x[:2], pids=[7, 8])  # entries added earlier get pid -1
    res = index.search(x[:1], 12)
    assert sorted(res.pids[0]) == [-1] * 10 + [7, 8]


def test_build_trains_automatically(data):
    x, pids, _, _ = data
    index = GalleryIndex.build(x, pids=pids, kind="ivf", metric="cosine", nprobe=64)
    assert index.is_trained and len(index) == N
    assert index.params["nlist"] == min(int(4 * np.sqrt(N)), N // 39)
    np.testing.assert_array_equal(index.search(x[:5], 1).indices[:, 0], np.arange(5))
    index.set_params(nprobe=1)
    with pytest.raises(ValueError, match="cannot be changed"):
        index.set_params(M=4)
    with pytest.raises(RuntimeError, match="already trained"):
        index.train(x)


def test_train_needs_enough_points(data):
    index = GalleryIndex(DIM, kind="ivf", nlist=100)
    index.add(data[0][:50])
    with pytest.raises(ValueError, match="at least 100 training vectors"):
        index.train()
    with pytest.raises(ValueError, match="nothing to train"):
        GalleryIndex(DIM, kind="ivf").train()


def test_bad_arguments(data):
    x = data[0]
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        GalleryIndex(DIM, kind="lsh")
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        GalleryIndex(DIM, metric="l1")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nlist'\]"):
        GalleryIndex(DIM, kind="hnsw", nlist=3)
    with pytest.raises(ValueError, match="m=5 must divide the dimension 16"):
        GalleryIndex.build(x, kind="ivfpq", m=5, nlist=4, nbits=4)
    index = GalleryIndex(DIM)
    with pytest.raises(ValueError, match="features has dimension 8, the index has 16"):
        index.add(x[:, :8])
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.add(np.full((2, DIM), np.nan))
    with pytest.raises(ValueError, match="pids must have one entry per feature row"):
        index.add(x[:4], pids=[1, 2])
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(x[:1], 1)
    index.add(x[:4])
    with pytest.raises(ValueError, match="queries has dimension 15"):
        index.search(x[:1, :15], 1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        index.search(x[:1], 0)


def test_load_rejects_mismatch_and_damage(data, tmp_path):
    x, pids, _, _ = data
    path = tmp_path / "g.idx"
    GalleryIndex.build(x[:100], pids=pids[:100], metric="cosine").save(path)
    with pytest.raises(ValueError, match=rf"{path}: index dimension is 16, expected 32"):
        GalleryIndex.load(path, dim=32)
    with pytest.raises(
        ValueError, match=rf"{path}: index metric is 'cosine', expected 'euclidean'"
    ):
        GalleryIndex.load(path, metric="euclidean")
    with pytest.raises(FileNotFoundError, match="no GalleryIndex file"):
        GalleryIndex.load(tmp_path / "missing.idx")

    blob = path.read_bytes()
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=rf"{truncated}: damaged"):
        GalleryIndex.load(truncated)
    flipped = tmp_path / "flipped.idx"
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 0xFF  # inside the stored faiss bytes
    flipped.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=rf"{flipped}: damaged"):
        GalleryIndex.load(flipped)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    with pytest.raises(ValueError, match=rf"{foreign}: damaged or not a GalleryIndex file"):
        GalleryIndex.load(foreign)
    text = tmp_path / "text.idx"
    text.write_text("hello")
    with pytest.raises(ValueError, match=rf"{text}: damaged or not a GalleryIndex file"):
        GalleryIndex.load(text)


def test_interrupted_save_keeps_existing_file(data, tmp_path, monkeypatch):
    x = data[0]
    path = tmp_path / "g.idx"
    GalleryIndex.build(x[:50]).save(path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        GalleryIndex.build(x[:200]).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.idx"]


def test_untrained_index_round_trips(data, tmp_path):
    x = data[0]
    index = GalleryIndex(DIM, kind="ivf", nlist=8)
    index.add(x[:500], pids=np.arange(500))
    index.save(tmp_path / "u.idx")
    loaded = GalleryIndex.load(tmp_path / "u.idx")
    assert not loaded.is_trained and len(loaded) == 500
    loaded.train()
    assert loaded.search(x[:1], 1).pids[0, 0] == 0
