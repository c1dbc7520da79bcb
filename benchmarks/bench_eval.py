"""Benchmark reid_dhm.retrieval against torchreid, fast-reid and the bare matrix product.

Not a test. Three parts, each measured side by side in one run:

* ``market``: Market-1501-sized clustered features (3,368 x 15,913 x 2048, ~750 ids,
  6 cameras, 2,793 pid-0 distractors): ``evaluate`` vs torchreid's Python
  ``evaluate_rank`` vs fast-reid 1.4.0's Cython evaluator (downloaded with
  ``pip download --no-deps`` and compiled in a temporary folder), every timing
  including its distance computation, plus the bare matrix product (the floor).
  ``--alternatives`` also times other ways to rank (full sort, top-k, faiss knn).
* ``distractors``: the same queries against Market + 500k distractors (515,913 x 2048,
  generated in chunks): time vs the bare (chunked) matrix product, peak memory.
* ``ann``: ``GalleryIndex`` IVF and HNSW vs exact flat search on 500k x 256-d:
  recall@10 and search speed-up.
* ``rerank``: ``evaluate(rerank=True)`` vs torchreid's ``re_ranking`` + ``evaluate_rank``.

    python benchmarks/bench_eval.py                  # everything (~25 min on 2 cores)
    python benchmarks/bench_eval.py --quick          # small sizes, a smoke run (4-6 min)
    python benchmarks/bench_eval.py --parts market --alternatives

The machine may be shared: every wall time is the best of ``--repeats`` runs, ours
and the matrix product are interleaved, and CPU (process) times are printed too.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_dhm.retrieval import GalleryIndex, evaluate  # noqa: E402

FASTREID = "fastreid==1.4.0"
FASTREID_PYX = "fastreid/evaluation/rank_cylib/rank_cy.pyx"


# ------------------------------------------------------------------------ data
class MarketLike:
    """Clustered re-ID-like features: identity centre + camera shift + noise, all in a
    128-d latent space projected to ``dim``, plus a little isotropic noise.

    ``lat_noise=1.2, cam_shift=0.5`` puts mAP around 0.6 at Market size.
    """

    def __init__(self, dim=2048, n_ids=750, n_cams=6, latent=128, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.dim, self.n_ids, self.n_cams, self.latent = dim, n_ids, n_cams, latent
        self.proj = torch.randn(latent, dim, generator=self.gen) / latent**0.5
        self.centers = torch.randn(n_ids, latent, generator=self.gen)
        self.cam_off = 0.5 * torch.randn(n_cams, latent, generator=self.gen)
        self.lat_noise = 1.2

    def labels(self, nq, ng, n_distractors):
        ids = np.arange(1, self.n_ids + 1)
        q_pids = ids[np.arange(nq) % self.n_ids]  # ~4.5 queries per identity
        q_cams = self.rng.integers(1, self.n_cams + 1, nq)
        g_pids = np.concatenate(
            [
                ids[self.rng.integers(0, self.n_ids, ng - n_distractors)],
                np.zeros(n_distractors, int),
            ]
        )
        g_cams = self.rng.integers(1, self.n_cams + 1, ng)
        return q_pids, g_pids, q_cams, g_cams

    def features(self, pids, cams, out=None, chunk=32768):
        """(N, dim) float32; pid 0 (distractor) gets a random centre of its own."""
        out = torch.empty(len(pids), self.dim) if out is None else out
        for s in range(0, len(pids), chunk):
            p = torch.from_numpy(pids[s : s + chunk])
            c = torch.from_numpy(cams[s : s + chunk]) - 1
            own = torch.randn(len(p), self.latent, generator=self.gen)
            lat = torch.where((p > 0)[:, None], self.centers[(p - 1).clamp(min=0)], own)
            lat = (
                lat
                + self.cam_off[c]
                + self.lat_noise * torch.randn(len(p), self.latent, generator=self.gen)
            )
            noise = torch.randn(len(p), self.dim, generator=self.gen) / self.dim**0.5
            out[s : s + len(p)] = lat @ self.proj + noise
        return out


# --------------------------------------------------------------------- helpers
def timed(fn, repeats=1):
    """(best wall seconds, cpu seconds of that run, last result)."""
    best, cpu, result = float("inf"), 0.0, None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        w, c = time.perf_counter() - w, time.process_time() - c
        if w < best:
            best, cpu = w, c
    return best, cpu, result


def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Reset VmHWM (Linux >= 4.0) so it measures the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_fastreid(workdir: Path, wheel: str | None):
    """Download fast-reid's wheel, compile its rank_cy.pyx here, import it."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    if wheel is None:  # pip has no in-process API: its command line, in a subprocess
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", FASTREID, "-d", workdir],
            check=True,
        )
        wheel = glob.glob(str(workdir / "fastreid-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        (workdir / "rank_cy.pyx").write_bytes(z.read(FASTREID_PYX))
    ext = Extension("rank_cy", [str(workdir / "rank_cy.pyx")], include_dirs=[np.get_include()])
    dist = Distribution({"ext_modules": cythonize([ext], quiet=True, language_level=3)})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib, cmd.build_temp = str(workdir), str(workdir / "build")
    dist.run_command("build_ext")
    so = glob.glob(str(workdir / "rank_cy*.so"))[0]
    spec = importlib.util.spec_from_file_location("rank_cy", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_distmat(qf, gf):
    """torchreid's compute_distance_matrix('euclidean'): the anchors' distance step."""
    d = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1)[None, :]
    return d.addmm_(qf, gf.T, beta=1, alpha=-2)


def header(title):
    print(f"\n== {title}  (load average {os.getloadavg()[0]:.2f})", flush=True)


# ------------------------------------------------------------------------ parts
def part_market(args, workdir):
    nq, ng, nd = (842, 3978, 698) if args.quick else (3368, 15913, 2793)
    header(f"market: {nq} x {ng} x 2048, euclidean")
    data = MarketLike()
    qp, gp, qc, gc = data.labels(nq, ng, nd)
    qf, gf = data.features(qp, qc), data.features(gp, gc)
    out = torch.empty(nq, ng)

    ours_t, mm_t = [], []
    res = None
    evaluate(qf[:50], gf, qp[:50], gp, qc[:50], gc)  # warm-up
    for _ in range(args.repeats):  # interleave: both see the same machine state
        ours_t.append(timed(lambda: evaluate(qf, gf, qp, gp, qc, gc))[:2])
        res = evaluate(qf, gf, qp, gp, qc, gc)
        mm_t.append(timed(lambda: torch.mm(qf, gf.T, out=out))[:2])
    ours_w, ours_c = min(ours_t)
    mm_w, mm_c = min(mm_t)
    print(
        f"ours      {ours_w:8.3f} s  (cpu {ours_c:6.2f} s)  mAP {res['mAP']:.4f} "
        f"mINP {res['mINP']:.4f} R1 {res['cmc'][0]:.4f}"
    )
    print(
        f"bare mm   {mm_w:8.3f} s  (cpu {mm_c:6.2f} s)   ours / mm = {ours_w / mm_w:.3f} "
        f"(cpu {ours_c / mm_c:.3f})"
    )
    rows = {"ours": ours_w, "mm": mm_w}

    if not args.skip_fastreid:
        fr = build_fastreid(workdir, args.fastreid_wheel)

        def run_fr():
            dm = torch_distmat(qf, gf).numpy()
            return fr.evaluate_cy(dm, qp, gp, qc, gc, 50, False)

        fr_w, fr_c, (fr_cmc, fr_ap, fr_inp) = timed(run_fr, args.repeats)
        d_map = abs(float(np.mean(fr_ap)) - res["mAP"])
        d_minp = abs(float(np.mean(fr_inp)) - res["mINP"])
        d_cmc = float(np.abs(fr_cmc - res["cmc"]).max())
        print(
            f"fast-reid {fr_w:8.3f} s  (cpu {fr_c:6.2f} s)  fast-reid / ours = "
            f"{fr_w / ours_w:.2f}x  |dmAP| {d_map:.2e} |dmINP| {d_minp:.2e} "
            f"max|dCMC| {d_cmc:.2e}"
        )
        rows["fastreid"] = fr_w

    if not args.skip_torchreid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchreid.reid.metrics.distance import compute_distance_matrix
            from torchreid.reid.metrics.rank import evaluate_rank

        def run_tr():
            dm = compute_distance_matrix(qf, gf, "euclidean").numpy()
            return evaluate_rank(dm, qp, gp, qc, gc, 50, use_cython=False)

        tr_w, tr_c, (tr_cmc, tr_map) = timed(run_tr, 1)
        print(
            f"torchreid {tr_w:8.3f} s  (cpu {tr_c:6.2f} s)  torchreid / ours = "
            f"{tr_w / ours_w:.1f}x  |dmAP| {abs(tr_map - res['mAP']):.2e} "
            f"CMC equal: {bool(np.array_equal(tr_cmc, res['cmc']))}"
        )
        rows["torchreid"] = tr_w

    if args.alternatives:
        alternatives(qf, gf, out, ours_w, args.repeats)
    return rows


def alternatives(qf, gf, out, ours_w, repeats):
    """Other ways to get ranks; each includes its distance step."""
    import faiss

    from reid_dhm.retrieval.distance import DistanceBlocks

    print("-- alternatives (each includes the distance computation)")
    blocks = DistanceBlocks(gf, "euclidean")

    def full_sort():
        d = blocks(qf, out=out)
        return torch.sort(d, dim=1, stable=True).indices

    def np_argsort():
        return np.argsort(blocks(qf, out=out).numpy(), axis=1)

    def topk():
        return torch.topk(blocks(qf, out=out), 50, dim=1, largest=False).indices

    def faiss_knn():
        index = faiss.IndexFlatL2(gf.shape[1])
        index.add(gf.numpy())
        return index.search(qf.numpy(), 50)

    for name, fn, note in (
        ("torch.sort (stable, full rows)", full_sort, "all metrics"),
        ("np.argsort (as fast-reid/torchreid)", np_argsort, "all metrics"),
        ("torch.topk k=50", topk, "CMC only"),
        ("faiss IndexFlatL2 k=50", faiss_knn, "CMC only"),
    ):
        w, c, _ = timed(fn, repeats if "sort" not in name else 1)
        print(f"{name:38s} {w:8.3f} s (cpu {c:6.2f})  / ours = {w / ours_w:.2f}  [{note}]")


def part_distractors(args):
    nd_extra = 50_000 if args.quick else args.distractors
    nq, ng, nd = (842, 3978, 698) if args.quick else (3368, 15913, 2793)
    total = ng + nd_extra
    header(f"distractors: {nq} x {total} x 2048 (Market + {nd_extra} distractors)")
    data = MarketLike()
    qp, gp, qc, gc = data.labels(nq, ng, nd)
    qf = data.features(qp, qc)
    gf = torch.empty(total, 2048)  # 4.2 GB at full size, filled in chunks
    data.features(gp, gc, out=gf[:ng])
    extra_p = np.zeros(nd_extra, dtype=np.int64)
    extra_c = data.rng.integers(1, 7, nd_extra)
    data.features(extra_p, extra_c, out=gf[ng:])
    g_pids = np.concatenate([gp, extra_p])
    g_cams = np.concatenate([gc, extra_c])
    feats_gib = (qf.numel() + gf.numel()) * 4 / 2**30
    print(f"features: {feats_gib:.2f} GiB")

    # Bare product in the same query blocks as evaluate (a full 3,368 x 515k float32
    # output would be 6.9 GB): the compute floor of any exact evaluation.
    from reid_dhm.retrieval.metrics import DEFAULT_MEMORY_BUDGET, chunk_rows
    from reid_dhm.retrieval.ranking import PositiveLookup

    # evaluate's block size: the distance rows and the per-pid arrays share the budget.
    slots = PositiveLookup(g_pids, g_cams).width(qp)
    rows = chunk_rows(total, DEFAULT_MEMORY_BUDGET, None, slots=slots)
    buf = torch.empty(min(rows, nq), total)

    def bare():
        for s in range(0, nq, rows):
            torch.mm(qf[s : s + rows], gf.T, out=buf[: min(rows, nq - s)])

    # Warm-up: also faults in the product's buffer, so it is resident before the peak
    # RSS baseline below and only evaluate's own memory counts as growth.
    bare()
    evaluate(qf[:50], gf, qp[:50], g_pids, qc[:50], g_cams)
    base = rss_kib()
    ours_t, mm_t, peaks = [], [], []
    res = None
    for _ in range(args.repeats):  # interleave: both see the same machine state
        have_peak = reset_peak_rss()
        w, c, res = timed(lambda: evaluate(qf, gf, qp, g_pids, qc, g_cams))
        ours_t.append((w, c))
        peaks.append(rss_kib("VmHWM") - base if have_peak else float("nan"))
        mm_t.append(timed(bare)[:2])
    ours_w, ours_c = min(ours_t)
    mm_w, mm_c = min(mm_t)
    peak = max(peaks)
    print(
        f"ours      {ours_w:8.2f} s (cpu {ours_c:7.1f})  mAP {res['mAP']:.4f} "
        f"mINP {res['mINP']:.4f} R1 {res['cmc'][0]:.4f}  [{rows} queries per block; "
        f"best of {args.repeats}]"
    )
    print(
        f"bare mm   {mm_w:8.2f} s (cpu {mm_c:7.1f})  ours / mm = {ours_w / mm_w:.3f} "
        f"(cpu {ours_c / mm_c:.3f})"
    )
    print(
        f"peak RSS growth during evaluate: {peak / 2**20:.2f} GiB above the "
        f"{base / 2**20:.2f} GiB resident before (features {feats_gib:.2f} GiB, "
        f"product buffer {buf.numel() * 4 / 2**30:.2f} GiB)"
    )
    n = nq * total
    print("anchors would need (their algorithms, beside the features):")
    gib = n / 2**30  # GiB per byte of per-entry storage
    print(
        f"  torchreid: distmat f32 {4 * gib:.1f} GiB + argsort int64 {8 * gib:.1f} + "
        f"g_pids[indices] int64 {8 * gib:.1f} + its == mask {gib:.1f} (then an int32 "
        f"copy, {4 * gib:.1f}) -> peak ~{21 * gib:.0f} GiB"
    )
    print(
        f"  fast-reid: distmat f32 {4 * gib:.1f} GiB + argsort int64 {8 * gib:.1f} "
        f"-> ~{12 * gib:.0f} GiB (its per-query buffers are small)"
    )


def part_ann(args):
    n = 50_000 if args.quick else args.ann_size
    dim, nq, k = args.ann_dim, 2000, 10
    header(f"ann: {n} x {dim}, {nq} queries, cosine, recall@{k} vs exact flat search")
    # Re-ID-like embeddings: identities (20 images each) in a 32-d latent space with
    # per-image latent noise, projected to `dim` plus a little isotropic noise.
    # (Isotropic Gaussian clusters in 256-d are far harder for any ANN index than
    # real embeddings, whose intrinsic dimension is low.)
    gen = torch.Generator().manual_seed(1)
    latent = 32
    proj = torch.randn(latent, dim, generator=gen) / latent**0.5
    centers = torch.randn(n // 20, latent, generator=gen)

    def make(m):
        pick = torch.randint(0, centers.shape[0], (m,), generator=gen)
        lat = centers[pick] + 0.5 * torch.randn(m, latent, generator=gen)
        return lat @ proj + 0.1 * torch.randn(m, dim, generator=gen)

    x = torch.cat([make(min(65536, n - s)) for s in range(0, n, 65536)]).numpy()
    q = make(nq).numpy()

    flat = GalleryIndex(dim, metric="cosine", kind="flat")
    flat.add(x)
    flat_w, _, exact = timed(lambda: flat.search(q, k), args.repeats)
    print(f"flat      search {flat_w:7.3f} s  ({nq / flat_w:8.0f} q/s)")

    def recall(found):
        return np.mean([len(set(a) & set(b)) / k for a, b in zip(found.indices, exact.indices)])

    nlist = 1024 if not args.quick else 256
    ivf = GalleryIndex(dim, metric="cosine", kind="ivf", nlist=nlist)
    sample = x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
    build_w, _, _ = timed(lambda: (ivf.train(sample), ivf.add(x)))
    print(f"ivf       nlist {nlist}: train+add {build_w:.1f} s")
    for nprobe in (8, 16, 32, 64, 128):
        ivf.set_params(nprobe=nprobe)
        w, _, found = timed(lambda: ivf.search(q, k), args.repeats)
        print(
            f"  nprobe {nprobe:3d}: search {w:7.3f} s  speed-up {flat_w / w:6.1f}x  "
            f"recall@{k} {recall(found):.3f}"
        )

    hnsw = GalleryIndex(dim, metric="cosine", kind="hnsw", M=16, efConstruction=64)
    build_w, _, _ = timed(lambda: hnsw.add(x))
    print(f"hnsw      M 16, efConstruction 64: build {build_w:.1f} s")
    for ef in (16, 32, 64, 128, 256):
        hnsw.set_params(efSearch=ef)
        w, _, found = timed(lambda: hnsw.search(q, k), args.repeats)
        print(
            f"  efSearch {ef:3d}: search {w:7.3f} s  speed-up {flat_w / w:6.1f}x  "
            f"recall@{k} {recall(found):.3f}"
        )


def part_rerank(args):
    """k-reciprocal re-ranking: ours vs torchreid's re_ranking on a mid-size problem,
    then ours alone at Market size (torchreid needs ~20 (Q+G)^2 bytes there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics.distance import compute_distance_matrix
        from torchreid.reid.metrics.rank import evaluate_rank
        from torchreid.reid.utils.rerank import re_ranking as torchreid_re_ranking

    data = MarketLike()
    sizes = [(842, 3978, 698)] if args.quick else [(842, 3978, 698), (3368, 15913, 2793)]
    for nq, ng, nd in sizes:
        _rerank_case(
            args, data, nq, ng, nd, compute_distance_matrix, evaluate_rank, torchreid_re_ranking
        )


def _rerank_case(
    args, data, nq, ng, nd, compute_distance_matrix, evaluate_rank, torchreid_re_ranking
):
    header(f"rerank: {nq} x {ng} x 2048, euclidean, k1=20 k2=6 lambda=0.3")
    qp, gp, qc, gc = data.labels(nq, ng, nd)
    qf, gf = data.features(qp, qc), data.features(gp, gc)
    base = rss_kib()
    have_peak = reset_peak_rss()
    w, c, res = timed(lambda: evaluate(qf, gf, qp, gp, qc, gc, rerank=True), 1)
    peak = (rss_kib("VmHWM") - base) / 2**20 if have_peak else float("nan")
    plain = evaluate(qf, gf, qp, gp, qc, gc)
    print(
        f"ours      {w:8.2f} s (cpu {c:7.1f})  mAP {plain['mAP']:.4f} -> {res['mAP']:.4f}  "
        f"peak RSS growth {peak:.2f} GiB"
    )
    if nq * ng > 842 * 3978 and not args.rerank_torchreid_full:
        n = nq + ng
        print(
            f"torchreid skipped at this size (needs ~{20 * n * n / 2**30:.0f} GiB and "
            "minutes; --rerank-torchreid-full runs it)"
        )
        return

    def run_tr():
        dist = [compute_distance_matrix(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        rr = torchreid_re_ranking(*dist, k1=20, k2=6, lambda_value=0.3)
        return evaluate_rank(rr, qp, gp, qc, gc, 50, use_cython=False)

    base = rss_kib()
    have_peak = reset_peak_rss()
    tw, tc, (cmc, mAP) = timed(run_tr, 1)
    peak = (rss_kib("VmHWM") - base) / 2**20 if have_peak else float("nan")
    print(
        f"torchreid {tw:8.2f} s (cpu {tc:7.1f})  mAP {mAP:.4f}  |dmAP| "
        f"{abs(mAP - res['mAP']):.2e}  CMC equal: {bool(np.array_equal(cmc, res['cmc']))}  "
        f"peak RSS growth {peak:.2f} GiB  torchreid / ours = {tw / w:.1f}x"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--parts", default="market,distractors,ann,rerank", help="comma-separated subset"
    )
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run, 4-6 min)")
    p.add_argument("--repeats", type=int, default=3, help="best-of for the fast timings")
    p.add_argument("--distractors", type=int, default=500_000)
    p.add_argument("--ann-size", type=int, default=500_000)
    p.add_argument("--ann-dim", type=int, default=256)
    p.add_argument("--skip-torchreid", action="store_true", help="skip the ~60 s anchor")
    p.add_argument("--skip-fastreid", action="store_true", help="no download / compile")
    p.add_argument("--fastreid-wheel", help="use this fastreid-1.4.0 wheel, no download")
    p.add_argument("--alternatives", action="store_true", help="also time sort/topk/faiss")
    p.add_argument(
        "--rerank-torchreid-full",
        action="store_true",
        help="also run torchreid's re_ranking at Market size (slow, ~10 GB)",
    )
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, quick={args.quick}"
    )
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        if "market" in parts:
            part_market(args, Path(tmp))
        if "distractors" in parts:
            part_distractors(args)
        if "ann" in parts:
            part_ann(args)
        if "rerank" in parts:
            part_rerank(args)


if __name__ == "__main__":
    main()
