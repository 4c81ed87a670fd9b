"""Visual-cache benchmark: our index vs the reference procedure on the same synthetic features.

    python benchmarks/cache.py --n 1000000            # ~2 GB of float16 features under --workdir
    python benchmarks/cache.py --n 3000000 --ref-queries 20

Data: synthetic *clustered* unit vectors shaped like image embeddings — a shared mean direction
(random pairs have cosine ≈ 0.13), 1024 top clusters × 16 sub-clusters (same sub-cluster ≈ 0.85,
same cluster ≈ 0.65) plus isotropic noise. Generated in chunks straight into a float16 memmap, so RAM
stays bounded; reused across runs with the same --n/--dim/--seed.

Printed side by side, on one index built once:
  before     the sizing rules' search plan (nprobe = max(32, nlist/64), refine 32), features
             memory-mapped: what ``VisualCache.from_features(..., recall=None)`` gives
  after      the recall planner's plan for ``--recall`` (default 0.95): nprobe/refine measured on
             held-out rows against exact search, features in RAM when index + features fit
             ``--memory-budget`` (``VisualCache.plan_for_recall``, what a default build does)
  reference  faiss IndexFlatIP search + one Python ``index.reconstruct`` per neighbour (as the
             reference's forward_visual does), float32 in RAM

Columns: build time, bytes in RAM (index; the float16 features are memory-mapped and listed
separately), p50/p99 latency of one query (search + neighbour vectors), recall@10 against exact
search (ground truth: exact top-10 over the stored float16 features for --queries queries).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting make faiss many times slower when the cores are shared
# (measured here: 17 s vs 0.3 s to train a small IVF-PQ); sleeping waiters cost microseconds.
# Must be set before faiss/numpy load their OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOP, SUB = 1024, 16  # cluster structure of the synthetic data


def _rss() -> dict[str, int]:
    """RssAnon / RssFile of this process in bytes (Linux)."""
    out = {"anon": 0, "file": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                out["file"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _mem_available() -> int:
    """MemAvailable (free + reclaimable page cache) in bytes, from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _centers(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mean direction [D] and sub-cluster centres [TOP*SUB, D] (unnormalised mixture parts)."""
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    mean = unit(rng.standard_normal(dim)).astype(np.float32)
    top = unit(rng.standard_normal((TOP, dim))).astype(np.float32)
    sub = 0.6 * unit(rng.standard_normal((TOP, SUB, dim))).astype(np.float32)
    centres = (0.5 * mean + top[:, None, :] + sub).reshape(TOP * SUB, dim)
    return mean, centres


NOISE = 0.5  # norm of the isotropic part; --noise raises it to flatten neighbourhoods


def synth(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors around random sub-cluster centres: [n, D] float32."""
    which = rng.integers(0, centres.shape[0], size=n)
    x = centres[which] + (NOISE / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_features(path: Path, n: int, dim: int, seed: int, chunk: int = 100_000) -> np.memmap:
    """Write (or reuse) the float16 [n, D] feature file, chunk by chunk."""
    done = path.with_suffix(".done")
    if path.exists() and done.exists() and done.read_text() == f"{n} {dim} {seed}":
        return np.memmap(path, dtype=np.float16, mode="r", shape=(n, dim))
    _, centres = _centers(dim, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=(n, dim))
    for i, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        mm[start:stop] = synth(stop - start, dim, centres, np.random.default_rng([seed, i]))
    mm.flush()
    del mm
    done.write_text(f"{n} {dim} {seed}")
    return np.memmap(path, dtype=np.float16, mode="r", shape=(n, dim))


def exact_topk(features: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Exact top-k rows by inner product over the float16 features (float32 math): [Q, k]."""
    import faiss

    best_s = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.zeros((queries.shape[0], k), dtype=np.int64)
    for start in range(0, features.shape[0], chunk):
        block = np.asarray(features[start : start + chunk], dtype=np.float32)
        s, i = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([best_s, s], 1)
        cand_i = np.concatenate([best_i, i + start], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def timed_queries(fn, queries: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Latency (seconds) of fn(q) for each single query, after a short warm-up."""
    for q in queries[:5]:
        fn(q)
    lat, rows = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows.append(fn(q))
        lat.append(time.perf_counter() - t0)
    return np.asarray(lat), rows


def build_ours(features, memory_budget, index=None):
    """(cache with the sizing rules' plan, build seconds, anon RSS growth)."""
    from ibllm_agent.cache import VisualCache

    gc.collect()
    before = _rss()["anon"]
    t0 = time.perf_counter()
    cache = VisualCache.from_features(features, memory_budget=memory_budget, index=index, recall=None)
    build_s = time.perf_counter() - t0
    gc.collect()
    return cache, build_s, _rss()["anon"] - before


def bench_ours(cache, label, build_s, anon, queries, truth, k, nprobe=0, refine=0):
    if (nprobe or refine) and cache.plan.nlist:  # override the plan (explore recall vs latency)
        cache.tune(nprobe=nprobe or None, refine=refine or None)

    def one(q):
        _, rows, _, _ = cache.neighbours(q[None, :], k)  # scores, rows, vectors: what enhance() needs
        return rows[0]

    lat, rows = timed_queries(one, queries)
    t_enh = []
    for q in queries[:100]:
        t1 = time.perf_counter()
        cache.enhance(q)
        t_enh.append(time.perf_counter() - t1)
    import faiss

    p = cache.plan
    store = "" if p.kind == "flat" else (" RAM" if p.resident else " mmap")
    return {
        "name": f"{label} ({p.kind}" + (f" {p.nlist} lists{f' PQ{p.pq_m}x{p.pq_nbits}' if p.pq_m else ' SQ8'}"
                                        f" nprobe={p.nprobe} refine x{p.refine}{store}"
                                        if p.kind != "flat" else "") + ")",
        "build_s": build_s,
        # index bytes, plus the float16 refinement store when the plan keeps it in RAM
        "ram": len(faiss.serialize_index(cache.index)) + (2 * len(cache) * cache.dim if p.resident else 0),
        "anon_delta": anon,
        "p50_ms": 1e3 * np.percentile(lat, 50),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "enhance_p50_ms": 1e3 * np.percentile(t_enh, 50),
        "recall": recall_at_k(np.stack(rows), truth),
    }


def bench_reference(features, queries, truth, k):
    import faiss

    n, d = features.shape
    gc.collect()
    before = _rss()["anon"]
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(d)
    for start in range(0, n, 100_000):
        index.add(np.asarray(features[start : start + 100_000], dtype=np.float32))
    build_s = time.perf_counter() - t0
    anon = _rss()["anon"] - before

    def one(q):
        _, rows = index.search(q[None, :], k)
        _protos = [index.reconstruct(int(i)) for i in rows[0]]  # one Python call per neighbour
        return rows[0]

    lat, rows = timed_queries(one, queries)
    out = {
        "name": "reference (flat IP + reconstruct)",
        "build_s": build_s,
        "ram": 4 * n * d,
        "anon_delta": anon,
        "p50_ms": 1e3 * np.percentile(lat, 50),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "enhance_p50_ms": float("nan"),
        "recall": recall_at_k(np.stack(rows), truth[: len(rows)]),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    global NOISE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of cached features")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=300, help="queries for latency and recall")
    ap.add_argument("--ref-queries", type=int, default=50, help="queries for the (slow) reference")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-budget", type=float, default=4.0, help="GiB of RAM for our index")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ibllm_cache_bench")
    ap.add_argument("--skip-reference", action="store_true", help="skip the flat float32 reference")
    ap.add_argument("--index", choices=["flat", "ivf_sq8", "ivf_pq"], default=None,
                    help="force our index kind (default: the sizing rules)")
    ap.add_argument("--nprobe", type=int, default=0, help="override nprobe (default: the sizing rules)")
    ap.add_argument("--refine", type=int, default=0, help="override the refine factor (candidates = refine·k)")
    ap.add_argument("--threads", type=int, default=0, help="faiss threads (default: all cores)")
    ap.add_argument("--recall", type=float, default=0.95, help="recall@10 target of the planned ('after') row")
    ap.add_argument("--plan-queries", type=int, default=256, help="held-out rows the planner measures on")
    ap.add_argument("--noise", type=float, default=NOISE,
                    help="norm of the isotropic noise (0.5: same-sub-cluster cosine ~0.85; 1.0: ~0.6, harder)")
    args = ap.parse_args(argv)

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPUs: {faiss.get_num_gpus()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    NOISE = args.noise
    tag = f"{args.n}_{args.dim}_{args.seed}" + (f"_noise{args.noise:g}" if args.noise != 0.5 else "")
    feats = make_features(args.workdir / f"feats_{tag}.f16", args.n, args.dim, args.seed)
    print(f"features: {args.n} x {args.dim} float16 = {feats.nbytes / 2**30:.2f} GiB memmap "
          f"({time.perf_counter() - t0:.1f} s)")
    _, centres = _centers(args.dim, args.seed)
    queries = synth(args.queries, args.dim, centres, np.random.default_rng([args.seed, 10**6]))
    t0 = time.perf_counter()
    truth_file = args.workdir / f"truth_{tag}_{args.queries}_{args.k}.npy"
    if truth_file.exists():
        truth = np.load(truth_file)
    else:
        truth = exact_topk(feats, queries, args.k)
        np.save(truth_file, truth)
    print(f"ground truth: exact top-{args.k} of {args.queries} queries ({time.perf_counter() - t0:.1f} s)")

    budget = int(args.memory_budget * 2**30)
    cache, build_s, anon = build_ours(feats, budget, args.index)
    results = [bench_ours(cache, "before: rules", build_s, anon, queries, truth, args.k, args.nprobe, args.refine)]
    t0 = time.perf_counter()
    report = cache.plan_for_recall(args.recall, memory_budget=budget, queries=args.plan_queries)
    plan_s = time.perf_counter() - t0
    results.append(bench_ours(cache, f"after: recall {args.recall:g}", plan_s, anon, queries, truth, args.k))
    print(f"planner: {report.summary()}; {plan_s:.1f} s (its build-s column)")
    ref_bytes = 4 * args.n * args.dim
    avail = _mem_available()
    if args.skip_reference:
        print("reference: skipped (--skip-reference)")
    elif ref_bytes > 0.6 * avail:  # leave room for everything else on the machine
        print(f"reference: skipped, its float32 flat index needs {ref_bytes / 2**30:.1f} GiB "
              f"and only {avail / 2**30:.1f} GiB RAM is free")
    else:
        nq = min(args.ref_queries, args.queries)
        results.append(bench_reference(feats, queries[:nq], truth[:nq], args.k))

    head = f"{'':72s} {'build s':>9s} {'RAM GiB':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'recall@10':>9s} {'enhance p50':>11s}"
    print(f"\nn = {args.n:,}, dim = {args.dim}, k = {args.k}, noise = {args.noise:g}")
    print(head)
    for r in results:
        enh = r["enhance_p50_ms"]  # not timed for the reference procedure (NaN): shown as "-"
        enh_text = f"{enh:9.2f} ms" if np.isfinite(enh) else f"{'-':>12s}"
        print(f"{r['name'][:72]:72s} {r['build_s']:9.1f} {r['ram'] / 2**30:8.3f} {r['p50_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['recall']:9.4f} {enh_text}")
    print(f"(features: {feats.nbytes / 2**30:.2f} GiB of float16, memory-mapped (mmap) or read into RAM; "
          f"anon RSS growth while building: {results[0]['anon_delta'] / 2**30:.2f} GiB; "
          f"recall@10 on {args.queries} queries not used for planning)")
    if len(results) > 2:
        print(f"(reference p50/p99 over {min(args.ref_queries, args.queries)} queries; "
              f"ours over {args.queries})")


if __name__ == "__main__":
    main()
