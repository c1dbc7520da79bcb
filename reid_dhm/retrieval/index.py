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
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..utils.checks import check_int
from ..utils.device import parse_device
from ..utils.io import atomic_path
from .validate import as_features, as_labels, check_metric

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
FORMAT = "reid_dhm.GalleryIndex"
FORMAT_VERSION = 1

# Defaults per kind; anything here can be overridden through GalleryIndex(**params).
# None (nlist, m) means "chosen at training": from the sample size / the dimension.
_DEFAULTS = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16},
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 128},
    "ivfpq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8},
}
# Valid ranges where they are not just ">= 1": faiss' HNSW crashes the process for
# M < 2, and its product quantiser codes take 1..16 bits.
_BOUNDS = {"M": (2, None), "nbits": (1, 16)}
# What set_params may change on a built index.
_SEARCH_PARAMS = {"ivf": ("nprobe",), "ivfpq": ("nprobe",), "hnsw": ("efSearch",)}
_NEEDS_TRAINING = ("ivf", "ivfpq")
# Kinds whose faiss index stores the (prepared) vectors exactly, so they can be read back.
_KEEPS_VECTORS = ("flat", "hnsw")
# faiss' k-means wants at least 39 training points per centroid to be well fed.
_POINTS_PER_CENTROID = 39
# The faiss class each kind builds (``_make_index``): a file's header must match its blob.
_FAISS_CLASSES = {
    "flat": "IndexFlat",
    "ivf": "IndexIVFFlat",
    "hnsw": "IndexHNSWFlat",
    "ivfpq": "IndexIVFPQ",
}
# Arrays of a saved file (np.savez members).
_ARRAYS = ("header", "index", "pending", "pids", "camids", "paths")


def _faiss():
    import faiss  # lazy: faiss pulls in large native libraries

    return faiss


def _num_gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


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


def _check_params(kind: str, dim: int, params: dict) -> dict:
    """The kind's defaults updated with ``params``, every value a checked Python int."""
    unknown = set(params) - set(_DEFAULTS[kind])
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}; "
            f"valid: {sorted(_DEFAULTS[kind])}"
        )
    out = dict(_DEFAULTS[kind])
    for name, value in params.items():
        if value is None and _DEFAULTS[kind][name] is None:
            continue  # chosen at training
        low, high = _BOUNDS.get(name, (1, None))
        out[name] = check_int(value, f"{kind} parameter {name}", low, high)
    if out.get("m") is not None and dim % out["m"]:
        raise ValueError(f"ivfpq: m={out['m']} must divide the dimension {dim}")
    return out


def _as_paths(values, n: int) -> np.ndarray | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes, os.PathLike)):
        raise ValueError("paths must be a sequence of one path per feature row, got one path")
    arr = np.asarray(list(values), dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"paths has {arr.shape[0]} entries, expected one per feature row ({n})")
    return np.array([str(p) for p in arr], dtype=object)


class GalleryIndex:
    """A searchable gallery: faiss index + per-entry pid / camid / path.

    Args:
        dim: feature dimension D.
        metric: ``'cosine'`` (default) or ``'euclidean'`` (squared L2).
        kind: ``'flat'``, ``'ivf'``, ``'hnsw'`` or ``'ivfpq'``.
        device: ``'auto'`` (GPU when faiss sees one and the kind has a GPU version,
            i.e. not hnsw), ``'cpu'``, or ``'cuda'`` / ``'cuda:K'`` / ``'gpu'``
            (ValueError here when faiss sees no such GPU).
        **params: kind options, positive integers: ivf ``nlist`` (default ~4 sqrt(N)
            at training), ``nprobe`` (16); hnsw ``M`` (32, >= 2), ``efConstruction``
            (80), ``efSearch`` (128; a search for k > efSearch uses k); ivfpq
            ``nlist``, ``nprobe``, ``m`` (sub-quantisers, must divide D; default the
            largest divisor of D <= D/4 that is <= 64), ``nbits`` (8, at most 16).

    Kinds ``ivf`` / ``ivfpq`` need training: ``add`` buffers vectors until ``train()``
    (on a given sample, or on everything added so far) and ``search`` before training
    raises. ``GalleryIndex.build`` does add + train in one call.

    Raises:
        ValueError (one line): bad dim, metric, kind, device or parameter (unknown name,
            not an integer, out of range, ``m`` not dividing D).
    """

    def __init__(
        self, dim: int, metric: str = "cosine", kind: str = "flat", device: str = "auto", **params
    ):
        self.dim = check_int(dim, "dim")
        self.metric = check_metric(metric)
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; valid kinds are {list(KINDS)}")
        self.kind = kind
        self.params = _check_params(kind, self.dim, params)
        dev = parse_device(device)  # None for 'auto'
        self.device = "auto" if dev is None else str(dev)
        self._gpu_id = self._explicit_gpu(dev, device)  # None: CPU, or 'auto' (decided later)
        self._index = None  # faiss index once built (flat / hnsw at once, ivf* at train)
        self._gpu_res = None
        self._pending: list[np.ndarray] = []  # vectors added before training
        self._pids = np.zeros(0, np.int64)
        self._camids = np.zeros(0, np.int64)
        self._paths = np.zeros(0, dtype=object)
        self._has = {"pids": False, "camids": False, "paths": False}
        if kind not in _NEEDS_TRAINING:
            self._set_index(self._make_index(None)[0])

    def _explicit_gpu(self, dev: torch.device | None, device) -> int | None:
        """The faiss GPU an explicit CUDA device asks for (checked now, not at train)."""
        if dev is None or dev.type == "cpu":
            return None
        if dev.type != "cuda":
            raise ValueError(
                f"GalleryIndex runs on 'cpu' or a faiss GPU ('cuda', 'cuda:K', 'gpu'), "
                f"got device {device!r}"
            )
        if self.kind == "hnsw":
            raise ValueError("faiss has no GPU version of the hnsw index; use device='cpu'")
        ngpu = _num_gpus()
        gpu = dev.index or 0
        if gpu >= ngpu:
            seen = "no GPU" if ngpu == 0 else f"only {ngpu} GPU(s)"
            raise ValueError(f"device={device!r} but faiss sees {seen}")
        return gpu

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
        """A new CPU faiss index, and the parameters chosen for it (nlist, m for ivf*).

        The chosen values are returned, not stored: ``train`` commits them only once
        training succeeded, so a failed attempt leaves ``params`` as the user gave them.
        """
        faiss = _faiss()
        p, d, metric = self.params, self.dim, self._faiss_metric()
        if self.kind == "flat":
            return faiss.IndexFlat(d, metric), {}
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, p["M"], metric)
            index.hnsw.efConstruction = p["efConstruction"]
            return index, {}
        nlist = p["nlist"]
        if nlist is None:
            # ~4 sqrt(N) lists, but never fewer than 39 training points per list.
            nlist = max(1, min(int(4 * math.sqrt(num_train)), num_train // _POINTS_PER_CENTROID))
        quantizer = faiss.IndexFlat(d, metric)
        if self.kind == "ivf":
            return faiss.IndexIVFFlat(quantizer, d, nlist, metric), {"nlist": nlist}
        m = p["m"] if p["m"] is not None else self._default_m()
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, p["nbits"], metric)
        # faiss' Python wrapper keeps the quantizer alive with the index.
        return index, {"nlist": nlist, "m": m}

    def _set_index(self, index) -> None:
        """Install a CPU faiss index, moving it to the GPU when asked / available."""
        faiss = _faiss()
        gpu = self._gpu_id
        if gpu is None and self.device == "auto" and self.kind != "hnsw" and _num_gpus() > 0:
            gpu = 0
        self._gpu_res = None
        if gpu is not None:
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, gpu, index)
        self._index = index
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._index is None:
            return
        if self.kind in ("ivf", "ivfpq"):
            self._index.nprobe = self.params["nprobe"]
        elif self.kind == "hnsw":
            self._index.hnsw.efSearch = self.params["efSearch"]

    def set_params(self, **params) -> None:
        """Change search-time parameters (``nprobe`` or ``efSearch``) on a built index."""
        allowed = _SEARCH_PARAMS.get(self.kind, ())
        bad = set(params) - set(allowed)
        if bad:
            raise ValueError(
                f"{sorted(bad)} cannot be changed on a {self.kind!r} index; "
                f"search parameters: {list(allowed)}"
            )
        self.params = _check_params(self.kind, self.dim, {**self.params, **params})
        self._apply_search_params()

    def _prepare(self, x, name: str) -> np.ndarray:
        """``x`` (N, D) as float32 numpy, L2-normalised for cosine (faiss inner product)."""
        t, sq = as_features(x, name, torch.device("cpu"))
        if t.shape[1] != self.dim:
            raise ValueError(f"{name} has dimension {t.shape[1]}, the index has {self.dim}")
        if self.metric == "cosine":
            t = t / sq.sqrt().clamp_min(1e-12)[:, None]
        return t.numpy()

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
            "pids": None if pids is None else as_labels(pids, "pids", n, "feature row"),
            "camids": None if camids is None else as_labels(camids, "camids", n, "feature row"),
            "paths": _as_paths(paths, n),
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

        On failure (too few vectors, a faiss error) nothing changes: ``params`` keeps
        the user's values (an automatic ``nlist`` is chosen again on the next try).
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
        index, chosen = self._make_index(sample.shape[0])
        need = chosen["nlist"]
        if self.kind == "ivfpq":
            need = max(need, 2 ** self.params["nbits"])
        if sample.shape[0] < need:
            raise ValueError(
                f"{self.kind} needs at least {need} training vectors (nlist / 2^nbits "
                f"centroids), got {sample.shape[0]}"
            )
        index.train(sample)
        self.params.update(chosen)
        self._set_index(index)
        for x in self._pending:
            self._index.add(x)
        self._pending = []

    @classmethod
    def build(
        cls, features, pids=None, camids=None, paths=None, *, metric="cosine", kind="flat", **kw
    ) -> GalleryIndex:
        """Create, add and (if the kind needs it) train in one call."""
        x, _ = as_features(features, "features", torch.device("cpu"))
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

        hnsw searches with ``max(efSearch, k)`` candidates: with fewer it returns fewer
        than k hits even when the index holds more.
        """
        k = check_int(k, "k")
        if not self.is_trained:
            raise RuntimeError(
                f"the {self.kind!r} index is not trained: call train() (or build()) "
                f"before search ({len(self)} vectors waiting)"
            )
        if len(self) == 0:
            raise ValueError("the index is empty: add() gallery features before search")
        q = self._prepare(queries, "queries")
        if self.kind == "hnsw" and k > self.params["efSearch"]:
            params = _faiss().SearchParametersHNSW(efSearch=k)
            dist, idx = self._index.search(q, k, params=params)
        else:
            dist, idx = self._index.search(q, k)
        if self.metric == "cosine":
            dist = 1.0 - dist  # similarity -> distance, so smaller is closer everywhere
        return self.gather(idx, dist)

    def gather(self, indices, distances) -> SearchResult:
        """A ``SearchResult`` for given index positions (Q, k) and their distances (Q, k).

        Positions < 0 mean "no hit": distance inf, pid / camid -1, path ''.
        """
        idx = np.asarray(indices).astype(np.int64)
        missing = idx < 0
        dist = np.where(missing, np.inf, distances).astype(np.float32)
        safe = np.where(missing, 0, idx)

        def meta(key, fill):
            if not self._has[key]:
                return None
            out = getattr(self, f"_{key}")[safe]
            out[missing] = fill
            return out

        return SearchResult(
            distances=dist,
            indices=idx,
            pids=meta("pids", -1),
            camids=meta("camids", -1),
            paths=meta("paths", ""),
        )

    def vectors(self) -> np.ndarray:
        """(N, D) float32 stored vectors in add order (L2-normalised for cosine).

        Only ``'flat'`` and ``'hnsw'`` indexes keep them exactly (ivf needs a direct
        map, ivfpq stores lossy codes): ValueError for the others.
        """
        if self.kind not in _KEEPS_VECTORS:
            raise ValueError(
                f"a {self.kind!r} index does not keep its vectors; only {list(_KEEPS_VECTORS)} "
                f"indexes do"
            )
        if len(self) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._index.reconstruct_n(0, len(self))

    # --------------------------------------------------------------- persisting
    def save(self, path: str | os.PathLike) -> None:
        """Write index + metadata to ``path`` atomically (temp file + ``os.replace``).

        The file gets the permissions of a newly created one (0666 minus the umask).
        """
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
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
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
            ValueError: damaged or foreign file (any other zip / .npz / .npy, bad
                header fields), or a dim / metric mismatch; the message names the file.
        """
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GalleryIndex file at {path}")
        data, header = _read_file(path)
        if dim is not None and header["dim"] != dim:
            raise ValueError(f"{path}: index dimension is {header['dim']}, expected {dim}")
        if metric is not None and header["metric"] != metric:
            raise ValueError(f"{path}: index metric is {header['metric']!r}, expected {metric!r}")
        blob = data["index"]
        if hashlib.sha256(blob.tobytes()).hexdigest() != header["index_sha256"]:
            raise ValueError(f"{path}: damaged file (index checksum mismatch)")
        try:
            obj = cls(header["dim"], header["metric"], header["kind"], device, **header["params"])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        size = header["size"]
        try:
            meta = [data[k] for k in ("pids", "camids", "paths")]
            if any(a.ndim != 1 or len(a) != size for a in meta):
                raise ValueError("metadata length mismatch")
            # NaN or fractional ids would become arbitrary integers in a cast.
            obj._pids, obj._camids = (
                as_labels(a, key, size, "entry") for a, key in zip(meta[:2], ("pids", "camids"))
            )
            obj._paths = np.array([str(p) for p in meta[2]], dtype=object)
            pending = data["pending"]
            if pending.ndim != 2 or (pending.shape[0] and pending.shape[1] != obj.dim):
                raise ValueError(f"buffered vectors of shape {pending.shape}")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: damaged file ({exc})") from None
        obj._has = header["has"]
        if blob.size:
            try:
                index = faiss.deserialize_index(blob)
            except RuntimeError as exc:
                raise ValueError(f"{path}: damaged file (faiss could not read it: {exc})") from None
            if index.d != obj.dim:
                raise ValueError(f"{path}: damaged file (faiss index of dimension {index.d})")
            check_faiss_kind(index, obj.kind, path)
            obj._set_index(index)
        if pending.shape[0]:
            obj._pending = [np.ascontiguousarray(pending, dtype=np.float32)]
        stored = (obj._index.ntotal if obj._index is not None else 0) + pending.shape[0]
        if stored != size:
            raise ValueError(f"{path}: damaged file ({stored} vectors for {size} entries)")
        return obj


def check_faiss_kind(index, kind: str, path) -> None:
    """The faiss index read from a file is the class its header's ``kind`` builds."""
    found = type(index).__name__
    # The flat index is IndexFlat or, written by older faiss, its L2 / IP subclasses.
    expected = _FAISS_CLASSES[kind]
    if found != expected and not (kind == "flat" and found in ("IndexFlatL2", "IndexFlatIP")):
        raise ValueError(
            f"{path}: damaged file (the header says a {kind!r} index, the faiss data "
            f"holds a {found})"
        )


def _read_file(path: Path) -> tuple[dict, dict]:
    """The arrays and the checked JSON header of a saved index; ValueError naming ``path``."""
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        # numpy's own text advises loading pickles unsafely: never pass that on.
        reason = "pickled data, refused" if "pickle" in str(exc) else str(exc).split(". ")[0]
        raise ValueError(f"{path}: damaged or not a GalleryIndex file ({reason})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy file: one bare array
        raise ValueError(f"{path}: not a GalleryIndex file (a single numpy array)")
    try:
        with z:
            missing = [name for name in _ARRAYS if name not in z.files]
            if missing:
                raise ValueError(f"no {missing} arrays")
            data = {name: z[name] for name in _ARRAYS}
        header = json.loads(data["header"].tobytes().decode())
    except RecursionError:  # a header nested thousands deep
        raise ValueError(f"{path}: damaged GalleryIndex header (nested too deeply)") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: damaged or not a GalleryIndex file ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a GalleryIndex file")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported GalleryIndex format {header.get('version')}")
    try:
        missing = [k for k in ("dim", "metric", "kind", "params", "size", "has", "index_sha256")
                   if k not in header]  # fmt: skip
        if missing:
            raise ValueError(f"no {missing} fields")
        check_int(header["size"], "size", low=0)
        if not isinstance(header["params"], dict):
            raise ValueError(f"params is {type(header['params']).__name__}, not a mapping")
        has = header["has"]
        if not isinstance(has, dict) or set(has) != {"pids", "camids", "paths"}:
            raise ValueError(f"bad 'has' field {has!r}")
        if data["index"].dtype != np.uint8 or data["index"].ndim != 1:
            raise ValueError("the faiss index is not a byte array")
    except ValueError as exc:
        raise ValueError(f"{path}: damaged GalleryIndex header ({exc})") from None
    return data, header
