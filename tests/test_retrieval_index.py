"""reid_dhm.retrieval.GalleryIndex on real faiss: build, search, metadata, save / load."""

import os

import numpy as np
import pytest
import torch

from reid_dhm.retrieval import GalleryIndex, SearchResult
from reid_dhm.retrieval.index import _num_gpus as _faiss_gpus

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
        GalleryIndex(DIM, kind="ivfpq", m=5)  # at once, not at training
    index = GalleryIndex(DIM)
    with pytest.raises(ValueError, match="features has dimension 8, the index has 16"):
        index.add(x[:, :8])
    with pytest.raises(ValueError, match="NaN or Inf"):
        index.add(np.full((2, DIM), np.nan))
    with pytest.raises(ValueError, match=r"pids has 2 entries, expected one per feature row \(4\)"):
        index.add(x[:4], pids=[1, 2])
    with pytest.raises(ValueError, match="camids must hold integers"):
        index.add(x[:2], camids=["a", "b"])
    with pytest.raises(ValueError, match="paths has 1 entries"):
        index.add(x[:2], paths=["a.jpg"])
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(x[:1], 1)
    index.add(x[:4])
    with pytest.raises(ValueError, match="queries has dimension 15"):
        index.search(x[:1, :15], 1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        index.search(x[:1], 0)
    assert len(index) == 4  # the failed adds left nothing behind


# (params, message): every one used to reach faiss (a crash of the whole process for
# M=0, SWIG TypeErrors, RuntimeErrors at search, a JSON TypeError at save).
BAD_PARAMS = [
    ({"kind": "hnsw", "M": 0}, "hnsw parameter M must be an integer >= 2, got 0"),
    ({"kind": "hnsw", "M": 1}, "hnsw parameter M must be an integer >= 2, got 1"),
    ({"kind": "hnsw", "efSearch": -1}, "hnsw parameter efSearch must be an integer >= 1"),
    ({"kind": "hnsw", "efConstruction": 0}, "efConstruction must be an integer >= 1"),
    ({"kind": "ivf", "nlist": 0}, "ivf parameter nlist must be an integer >= 1, got 0"),
    ({"kind": "ivf", "nlist": -3}, "ivf parameter nlist must be an integer >= 1, got -3"),
    ({"kind": "ivf", "nlist": 2.5}, "ivf parameter nlist must be an integer >= 1, got 2.5"),
    ({"kind": "ivf", "nprobe": 0}, "ivf parameter nprobe must be an integer >= 1, got 0"),
    ({"kind": "ivf", "nprobe": True}, "nprobe must be an integer >= 1, got True"),
    ({"kind": "ivfpq", "nbits": 0}, r"ivfpq parameter nbits must be an integer in \[1, 16\]"),
    ({"kind": "ivfpq", "nbits": 17}, r"nbits must be an integer in \[1, 16\], got 17"),
    ({"kind": "ivfpq", "m": 0}, "ivfpq parameter m must be an integer >= 1, got 0"),
    ({"kind": "ivfpq", "m": "4"}, "ivfpq parameter m must be an integer >= 1, got '4'"),
    (
        {"kind": "ivf", "efSearch": 4},
        r"unknown parameter\(s\) \['efSearch'\] for kind 'ivf'; "
        r"valid: \['nlist', 'nprobe'\]",
    ),  # fmt: skip
    ({"kind": "flat", "nprobe": 4}, r"for kind 'flat'; valid: \[\]"),
    ({"device": "mps"}, "GalleryIndex runs on 'cpu' or a faiss GPU"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"kind": "hnsw", "device": "gpu"}, "faiss has no GPU version of the hnsw index"),
]


@pytest.mark.parametrize(("kw", "message"), BAD_PARAMS)
def test_bad_parameters_raise_one_line_value_error(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        GalleryIndex(DIM, **kw)
    assert "\n" not in str(err.value)


def test_set_params_checks_values(data):
    index = GalleryIndex(DIM, kind="hnsw", M=8)
    with pytest.raises(ValueError, match="efSearch must be an integer >= 1, got 0"):
        index.set_params(efSearch=0)
    with pytest.raises(ValueError, match=r"cannot be changed on a 'hnsw' index; search par"):
        index.set_params(M=4)
    assert index.params["efSearch"] == 128  # unchanged by the failed calls
    index.set_params(efSearch=np.int64(40))
    assert index.params["efSearch"] == 40 and type(index.params["efSearch"]) is int


def test_numpy_integer_parameters_save_and_load(data, tmp_path):
    x = data[0]
    index = GalleryIndex.build(
        x, kind="ivfpq", nlist=np.int64(8), nprobe=np.int32(8), m=np.int64(4), nbits=np.uint8(6)
    )
    assert all(type(v) is int for v in index.params.values())
    index.save(tmp_path / "np.idx")  # used to fail: np.int64 is not JSON serialisable
    loaded = GalleryIndex.load(tmp_path / "np.idx")
    assert loaded.params == {"nlist": 8, "nprobe": 8, "m": 4, "nbits": 6}


@pytest.mark.skipif(_faiss_gpus() > 0, reason="needs a machine where faiss sees no GPU")
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:0"])
def test_gpu_requested_without_gpu_fails_at_construction(device):
    # Used to pass here and fail only at train() for ivf / ivfpq.
    for kind in ("ivf", "ivfpq", "flat"):
        with pytest.raises(ValueError, match=f"device='{device}' but faiss sees no GPU"):
            GalleryIndex(DIM, kind=kind, device=device)


def test_failed_train_leaves_params_unchanged(data):
    x = data[0]
    index = GalleryIndex(DIM, kind="ivfpq", nbits=8)
    index.add(x[:100])
    with pytest.raises(ValueError, match="needs at least 256 training vectors"):
        index.train()
    assert index.params["nlist"] is None and index.params["m"] is None
    index.add(x[100:])
    index.train()
    # Chosen from all 2,000 vectors, not the 2 lists of the failed 100-vector attempt.
    assert index.params["nlist"] == min(int(4 * np.sqrt(N)), N // 39)
    assert index.params["m"] == 4


def test_hnsw_search_beyond_ef_search_returns_k_hits(data):
    x = data[0][:1000]
    index = GalleryIndex(DIM, metric="euclidean", kind="hnsw", M=16, efSearch=16)
    index.add(x)
    res = index.search(x[:5], 500)
    # With efSearch=16 faiss found only ~100-270 of the 500 (index -1 for the rest).
    assert (res.indices >= 0).all()
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    exact = np.sort(brute_force(x, x[:5], "euclidean"), axis=1)[:, :500]
    assert np.mean(np.abs(res.distances - exact) < 1e-3) > 0.95
    assert index.params["efSearch"] == 16  # the setting itself is unchanged


def test_vectors_of_exact_kinds(data):
    x = data[0][:300]
    for kind in ("flat", "hnsw"):
        cos = GalleryIndex.build(x, kind=kind, metric="cosine")
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(cos.vectors(), unit, rtol=0, atol=1e-6)
        l2 = GalleryIndex.build(x, kind=kind, metric="euclidean")
        np.testing.assert_array_equal(l2.vectors(), x)
    for kind, kw in (("ivf", {"nlist": 4}), ("ivfpq", {"nlist": 4, "nbits": 4})):
        with pytest.raises(ValueError, match=f"a '{kind}' index does not keep its vectors"):
            GalleryIndex.build(x, kind=kind, **kw).vectors()


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
    # A bare .npy array (e.g. saved features) used to give a raw TypeError.
    npy = tmp_path / "feats.npy"
    np.save(npy, x[:10])
    with pytest.raises(ValueError, match=rf"{npy}: not a GalleryIndex file"):
        GalleryIndex.load(npy)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=rf"{pickled}: damaged or not a GalleryIndex file"):
        GalleryIndex.load(pickled)


def _rewrite_header(src, dst, edit):
    import json

    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    header = edit(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: {k: v for k, v in h.items() if k != "dim"}, r"header \(no \['dim'\] fields"),
        (lambda h: {**h, "size": "many"}, "size must be an integer"),
        (lambda h: {**h, "params": [1]}, "params is list, not a mapping"),
        (lambda h: {**h, "has": None}, "bad 'has' field"),
        (lambda h: {**h, "dim": "16"}, "dim must be an integer >= 1, got '16'"),
        (lambda h: {**h, "kind": "lsh"}, "unknown index kind 'lsh'"),
        (lambda h: {**h, "params": {"M": 0}}, "unknown parameter"),
        (lambda h: [h], "not a GalleryIndex file"),
    ],
)
def test_load_rejects_bad_header_fields(data, tmp_path, edit, message):
    good = tmp_path / "good.idx"
    GalleryIndex.build(data[0][:50], pids=data[1][:50]).save(good)
    bad = tmp_path / "bad.idx"
    _rewrite_header(good, bad, edit)
    with pytest.raises(ValueError, match=message) as err:
        GalleryIndex.load(bad)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)


def test_saved_file_has_normal_permissions(data, tmp_path):
    old = os.umask(0o022)
    try:
        GalleryIndex.build(data[0][:20]).save(tmp_path / "g.idx")
    finally:
        os.umask(old)
    # mkstemp's 0600 used to survive the rename: other users could not read the index.
    assert (tmp_path / "g.idx").stat().st_mode & 0o777 == 0o644


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
