"""``GalleryIndex``: a faiss index over gallery features plus their pids, camids, paths.

Distances returned by ``search`` are "smaller is closer" for every metric, matching
``evaluate``:

* ``metric='cosine'``: ``1 - cos`` (vectors are L2-normalised, faiss inner product);
* ``metric='euclidean'``: SQUARED L2 distance (faiss' native L2, like torchreid's).

Kinds: ``'flat'`` (exact), ``'ivf'`` (inverted lists, needs training), ``'hnsw'``
(graph, no training), ``'ivfpq'`` (inverted lists + product quantisation, needs
training). faiss is imported lazily so ``import reid_dhm`` stays light.

On-disk format: one ``.npz``-style zip holding a JSON header, the faiss index bytes
and the metadata arrays, written to a temporary file in the same folder, fsynced and
``os.replace``-d over the target, so an interrupted save never damages an existing file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .validate import METRICS

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
FORMAT = "reid_dhm.GalleryIndex"
FORMAT_VERSION = 1

# Defaults per kind; anything here can be overridden through GalleryIndex(**params).
_DEFAULTS = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16},
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 128},
    "ivfpq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8},
}
_NEEDS_TRAINING = ("ivf", "ivfpq")
# faiss' k-means wants at least 39 training points per centroid to be well fed.
_POINTS_PER_CENTROID = 39


def _faiss():
    import faiss  # lazy: faiss pulls in large native libraries

    return faiss


@dataclass
class SearchResult:
    """Result of ``GalleryIndex.search`` for Q queries and k neighbours.

    Attributes:
        distances: (Q, k) float32, ascending per row (squared L2 or 1 - cos);
            ``inf`` where fewer than k results exist.
        indices: (Q, k) int64 positions in the index (add order); -1 where missing.
        pids, camids: (Q, k) int64 metadata of the hits (-1 where missing or never
            given), or None when no ``add`` supplied them.
        paths: (Q, k) object array of str ('' where missing), or None.
    """

    distances: np.ndarray
    indices: np.ndarray
    pids: np.ndarray | None
    camids: np.ndarray | None
    paths: np.ndarray | None


def _as_matrix(x, name: str, dim: int) -> np.ndarray:
    """``x`` as a contiguous (N, dim) float32 numpy array; checks shape and values."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, the index has {dim}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return arr


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _meta(values, name: str, n: int, kind: str) -> np.ndarray | None:
    if values is None:
        return None
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=object if kind == "path" else None)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have one entry per feature row ({n}), got {arr.shape}")
    if kind == "path":
        return np.array([str(p) for p in arr], dtype=object)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


class GalleryIndex:
    """A searchable gallery: faiss index + per-entry pid / camid / path.

    Args:
        dim: feature dimension D.
        metric: ``'cosine'`` (default) or ``'euclidean'`` (squared L2).
        kind: ``'flat'``, ``'ivf'``, ``'hnsw'`` or ``'ivfpq'``.
        device: ``'auto'`` (GPU when faiss sees one and the kind has a GPU version,
            i.e. not hnsw), ``'cpu'``, or ``'cuda'``/``'gpu'`` (error without a GPU).
        **params: kind options: ivf ``nlist`` (default ~4 sqrt(N) at training),
            ``nprobe`` (16); hnsw ``M`` (32), ``efConstruction`` (80), ``efSearch``
            (128); ivfpq ``nlist``, ``nprobe``, ``m`` (sub-quantisers, must divide D;
            default the largest divisor of D <= D/4 that is <= 64), ``nbits`` (8).

    Kinds ``ivf`` / ``ivfpq`` need training: ``add`` buffers vectors until ``train()``
    (on a given sample, or on everything added so far) and ``search`` before training
    raises. ``GalleryIndex.build`` does add + train in one call.
    """

    def __init__(
        self, dim: int, metric: str = "cosine", kind: str = "flat", device: str = "auto", **params
    ):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(METRICS)}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; valid kinds are {list(KINDS)}")
        unknown = set(params) - set(_DEFAULTS[kind])
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}; "
                f"valid: {sorted(_DEFAULTS[kind])}"
            )
        if device not in ("auto", "cpu", "cuda", "gpu"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'gpu', got {device!r}")
        self.dim = int(dim)
        self.metric = metric
        self.kind = kind
        self.device = device
        self.params = {**_DEFAULTS[kind], **params}
        self._index = None  # faiss index once built (flat / hnsw at once, ivf* at train)
        self._gpu_res = None
        self._pending: list[np.ndarray] = []  # vectors added before training
        self._pids = np.zeros(0, np.int64)
        self._camids = np.zeros(0, np.int64)
        self._paths = np.zeros(0, dtype=object)
        self._has = {"pids": False, "camids": False, "paths": False}
        if kind not in _NEEDS_TRAINING:
            self._set_index(self._make_index(None))

    # ----------------------------------------------------------------- building
    @property
    def needs_training(self) -> bool:
        return self.kind in _NEEDS_TRAINING

    @property
    def is_trained(self) -> bool:
        return self._index is not None and bool(self._index.is_trained)

    @property
    def on_gpu(self) -> bool:
        return self._gpu_res is not None

    def __len__(self) -> int:
        return len(self._pids)

    def __repr__(self) -> str:
        return (
            f"GalleryIndex(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, "
            f"size={len(self)}, trained={self.is_trained}, gpu={self.on_gpu})"
        )

    def _faiss_metric(self):
        faiss = _faiss()
        return faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2

    def _default_m(self) -> int:
        cap = min(64, max(1, self.dim // 4))
        return max(m for m in range(1, cap + 1) if self.dim % m == 0)

    def _make_index(self, num_train: int | None):
        faiss = _faiss()
        p, d, metric = self.params, self.dim, self._faiss_metric()
        if self.kind == "flat":
            return faiss.IndexFlat(d, metric)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(p["M"]), metric)
            index.hnsw.efConstruction = int(p["efConstruction"])
            return index
        nlist = p["nlist"]
        if nlist is None:
            # ~4 sqrt(N) lists, but never fewer than 39 training points per list.
            nlist = max(1, min(int(4 * math.sqrt(num_train)), num_train // _POINTS_PER_CENTROID))
            p["nlist"] = nlist
        quantizer = faiss.IndexFlat(d, metric)
        if self.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, int(nlist), metric)
        else:
            m = p["m"] if p["m"] is not None else self._default_m()
            if d % int(m):
                raise ValueError(f"ivfpq: m={m} must divide the dimension {d}")
            p["m"] = int(m)
            index = faiss.IndexIVFPQ(quantizer, d, int(nlist), int(m), int(p["nbits"]), metric)
        return index  # faiss' Python wrapper keeps the quantizer alive with the index

    def _set_index(self, index) -> None:
        """Install a CPU faiss index, moving it to the GPU when asked / available."""
        faiss = _faiss()
        want_gpu = self.device in ("cuda", "gpu")
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if want_gpu and ngpu == 0:
            raise ValueError(f"device={self.device!r} but faiss sees no GPU")
        if want_gpu and self.kind == "hnsw":
            raise ValueError("faiss has no GPU version of the hnsw index; use device='cpu'")
        use_gpu = (want_gpu or self.device == "auto") and ngpu > 0 and self.kind != "hnsw"
        self._gpu_res = None
        if use_gpu:
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        self._index = index
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._index is None:
            return
        if self.kind in ("ivf", "ivfpq"):
            self._index.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self._index.hnsw.efSearch = int(self.params["efSearch"])

    def set_params(self, **params) -> None:
        """Change search-time parameters (``nprobe`` or ``efSearch``) on a built index."""
        allowed = {"ivf": {"nprobe"}, "ivfpq": {"nprobe"}, "hnsw": {"efSearch"}}.get(self.kind, ())
        bad = set(params) - set(allowed)
        if bad:
            raise ValueError(f"{sorted(bad)} cannot be changed on a {self.kind!r} index")
        self.params.update(params)
        self._apply_search_params()

    def _prepare(self, x, name: str) -> np.ndarray:
        arr = _as_matrix(x, name, self.dim)
        return _normalise(arr) if self.metric == "cosine" else arr

    def add(self, features, pids=None, camids=None, paths=None) -> None:
        """Append N gallery entries.

        Args:
            features: (N, D) array or tensor.
            pids, camids: optional (N,) integers; paths: optional N strings. An entry
                added without them gets pid / camid -1 and path ''.
        """
        x = self._prepare(features, "features")
        n = x.shape[0]
        new = {
            "pids": _meta(pids, "pids", n, "int"),
            "camids": _meta(camids, "camids", n, "int"),
            "paths": _meta(paths, "paths", n, "path"),
        }
        if self.is_trained:
            self._index.add(x)
        else:
            self._pending.append(x)
        for key, fill in (("pids", -1), ("camids", -1), ("paths", "")):
            values = new[key]
            if values is None:
                values = np.full(n, fill, dtype=object if key == "paths" else np.int64)
            else:
                self._has[key] = True
            setattr(self, f"_{key}", np.concatenate([getattr(self, f"_{key}"), values]))

    def train(self, features=None) -> None:
        """Train an ivf / ivfpq index, then add the vectors buffered by ``add``.

        Args:
            features: (N, D) training sample; default all vectors added so far.
        """
        if not self.needs_training:
            return
        if self.is_trained:
            raise RuntimeError(
                f"the {self.kind!r} index is already trained; build a new GalleryIndex to retrain"
            )
        if features is not None:
            sample = self._prepare(features, "features")
        elif self._pending:
            sample = np.concatenate(self._pending)
        else:
            raise ValueError(f"nothing to train the {self.kind!r} index on: add() vectors first")
        index = self._make_index(sample.shape[0])
        need = int(self.params["nlist"])
        if self.kind == "ivfpq":
            need = max(need, 2 ** int(self.params["nbits"]))
        if sample.shape[0] < need:
            raise ValueError(
                f"{self.kind} needs at least {need} training vectors (nlist / 2^nbits "
                f"centroids), got {sample.shape[0]}"
            )
        index.train(sample)
        self._set_index(index)
        for x in self._pending:
            self._index.add(x)
        self._pending = []

    @classmethod
    def build(
        cls, features, pids=None, camids=None, paths=None, *, metric="cosine", kind="flat", **kw
    ) -> GalleryIndex:
        """Create, add and (if the kind needs it) train in one call."""
        x = features.detach().cpu().numpy() if hasattr(features, "detach") else features
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D), got shape {x.shape}")
        index = cls(x.shape[1], metric=metric, kind=kind, **kw)
        index.add(x, pids=pids, camids=camids, paths=paths)
        index.train()
        return index

    # ---------------------------------------------------------------- searching
    def search(self, queries, k: int) -> SearchResult:
        """The k nearest gallery entries of each query.

        Args:
            queries: (Q, D) array or tensor.
            k: neighbours per query (>= 1); rows are padded with index -1 when the
                index holds fewer than k entries.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if not self.is_trained:
            raise RuntimeError(
                f"the {self.kind!r} index is not trained: call train() (or build()) "
                f"before search ({len(self)} vectors waiting)"
            )
        if len(self) == 0:
            raise ValueError("the index is empty: add() gallery features before search")
        q = self._prepare(queries, "queries")
        dist, idx = self._index.search(q, int(k))
        idx = idx.astype(np.int64)
        missing = idx < 0
        if self.metric == "cosine":
            dist = 1.0 - dist  # similarity -> distance, so smaller is closer everywhere
        dist = np.where(missing, np.inf, dist).astype(np.float32)
        safe = np.where(missing, 0, idx)

        def gather(values, fill, key):
            if not self._has[key]:
                return None
            out = values[safe]
            out[missing] = fill
            return out

        return SearchResult(
            distances=dist,
            indices=idx,
            pids=gather(self._pids, -1, "pids"),
            camids=gather(self._camids, -1, "camids"),
            paths=gather(self._paths, "", "paths"),
        )

    # --------------------------------------------------------------- persisting
    def save(self, path: str | os.PathLike) -> None:
        """Write index + metadata to ``path`` atomically (temp file + ``os.replace``)."""
        faiss = _faiss()
        path = Path(path)
        blob = np.zeros(0, np.uint8)
        if self._index is not None:
            cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
            blob = faiss.serialize_index(cpu)
        pending = np.concatenate(self._pending) if self._pending else np.zeros((0, self.dim))
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "metric": self.metric,
            "kind": self.kind,
            "params": self.params,
            "size": len(self),
            "has": self._has,
            "index_sha256": hashlib.sha256(blob.tobytes()).hexdigest(),
        }
        arrays = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "index": blob,
            "pending": pending.astype(np.float32),
            "pids": self._pids,
            "camids": self._camids,
            "paths": np.array(self._paths.tolist(), dtype=str),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        try:  # persist the rename itself (best effort: not every filesystem allows it)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        dim: int | None = None,
        metric: str | None = None,
        device: str = "auto",
    ) -> GalleryIndex:
        """Read an index written by ``save``.

        Args:
            dim, metric: when given, the file must match them (else ValueError).
            device: as in the constructor.

        Raises:
            FileNotFoundError: no such file.
            ValueError: damaged or foreign file, or a dim / metric mismatch; the message
                names the file.
        """
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GalleryIndex file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {name: z[name] for name in z.files}
            header = json.loads(data["header"].tobytes().decode())
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
            raise ValueError(f"{path}: damaged or not a GalleryIndex file ({exc})") from None
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a GalleryIndex file")
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported GalleryIndex format {header.get('version')}")
        if dim is not None and header["dim"] != dim:
            raise ValueError(f"{path}: index dimension is {header['dim']}, expected {dim}")
        if metric is not None and header["metric"] != metric:
            raise ValueError(f"{path}: index metric is {header['metric']!r}, expected {metric!r}")
        blob = data["index"]
        if hashlib.sha256(blob.tobytes()).hexdigest() != header["index_sha256"]:
            raise ValueError(f"{path}: damaged file (index checksum mismatch)")
        obj = cls(header["dim"], header["metric"], header["kind"], device, **header["params"])
        size = int(header["size"])
        meta = (data["pids"], data["camids"], data["paths"])
        if any(len(a) != size for a in meta):
            raise ValueError(f"{path}: damaged file (metadata length mismatch)")
        obj._pids = data["pids"].astype(np.int64)
        obj._camids = data["camids"].astype(np.int64)
        obj._paths = data["paths"].astype(object)
        obj._has = header["has"]
        if blob.size:
            try:
                index = faiss.deserialize_index(blob)
            except RuntimeError as exc:
                raise ValueError(f"{path}: damaged file (faiss could not read it: {exc})") from None
            obj._set_index(index)
        pending = data["pending"]
        if pending.shape[0]:
            obj._pending = [np.ascontiguousarray(pending, dtype=np.float32)]
        stored = (obj._index.ntotal if obj._index is not None else 0) + pending.shape[0]
        if stored != size:
            raise ValueError(f"{path}: damaged file ({stored} vectors for {size} entries)")
        return obj
