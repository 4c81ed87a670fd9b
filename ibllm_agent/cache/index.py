"""Which faiss index a cache gets, how it is trained, and how it is searched.

Sizing rules (our own; autofaiss, which the reference used, does not run with numpy 2):

- **flat** (exact inner product, ``IndexFlatIP``) when n <= ``FLAT_MAX_N`` (20 000) and the float32
  copy (4·n·d bytes) fits the memory budget. A flat query streams all 4·n·d bytes (measured: 173 ms
  at 1 M x 1024, so ~3.5 ms at 20 k), while the inverted file answers in ~1 ms at any size here.
- **ivf_pq** (inverted file, fast-scan product quantiser: m = max(d/8, min(d, 16)) sub-vectors with
  4-bit codes, 64 bytes per vector at d = 1024) otherwise; m is lowered (to an even divisor of d)
  until the codes fit.
- **ivf_sq8** (inverted file, 8-bit scalar quantiser, d bytes per vector) only when asked for
  (``kind="ivf_sq8"`` / ``--index ivf_sq8``): measured at 200 k x 1024 it was slower (1.35 vs
  0.81 ms) and 12x larger than ivf_pq at the same recall (1.0 on the benchmark's default data, 0.89
  on its ``--noise 2.0`` data): after exact re-scoring, code precision was not what limited recall.

For both IVF kinds:

- nlist = the power of two nearest √n, kept within [16, 65 536] and at most n/39 (faiss wants
  >= 39 training points per centroid). 1 M → 1024 lists, 3 M → 2048. Not the usual 4·√n: at
  d = 1024 one query's coarse search reads nlist·4 KiB of centroids (32 MiB at 8192 lists, ~1 ms of
  memory bandwidth), far more than the PQ codes it then scans, and fewer lists also make adding
  (n·nlist·d multiply-adds) 4x cheaper.
- nprobe = max(32, nlist/64) lists are scanned per query (32 at 200 k, 1 M and 3 M: 1/16, 1/32,
  1/64 of the codes). Fast-scan makes probes cheap: at 200 k on ``--noise 2.0`` data, nprobe 16 /
  32 / 64 gave recall@10 0.89 / 0.94 / 0.97 at p50 0.78 / 0.83 / 0.92 ms.
- The coarse centroids are trained by two-level spherical k-means (√nlist clusters, then
  sub-clusters inside each) on a sample of ``min(n, max(64·nlist, 50 000), 300 000)`` vectors: a flat
  k-means with thousands of centroids costs many minutes on two cores, the two-level one seconds.
- Search is approximate only for *candidates*: the index returns ``refine·k`` of them (refine = 32
  for PQ, whose 4-bit codes rank near-ties poorly; 4 for SQ8) and their exact inner
  products are recomputed from the float16 features (memory-mapped, so only the candidate rows are
  read: 320 rows = 640 KiB at k = 10, D = 1024). Scores returned are therefore exact.

``memory_budget`` bounds the bytes the index keeps in RAM (codes + ids + centroids). The float16
features are memory-mapped from disk, or read into RAM when index + features fit the budget together
(``IndexPlan.resident``, decided by the recall planner).

These rules fix the index *structure*; nprobe and refine above are only the starting point: by
default a build measures recall on held-out rows and re-plans them for a recall target
(``ibllm_agent.cache.planner``).

faiss-gpu is used when ``faiss.get_num_gpus() > 0`` (the index is cloned to GPU 0 for search; if the
GPU implementation rejects the index, search stays on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ibllm_agent.errors import CacheError, EmptyCacheError

IndexKind = Literal["flat", "ivf_sq8", "ivf_pq", "external"]

FLAT_MAX_N = 20_000
DEFAULT_MEMORY_BUDGET = 4 * 1024**3  # 4 GiB
_MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that k-means is under-trained
_MIN_IVF_N = 64


@dataclass(frozen=True)
class IndexPlan:
    """The chosen index and its parameters (stored in the cache's meta.json)."""

    kind: IndexKind
    n: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    pq_nbits: int = 8
    refine: int = 1
    train_size: int = 0
    # Keep the float16 refinement store in RAM (set by the recall planner when index + features fit
    # the memory budget; see ``ibllm_agent.cache.planner``).
    resident: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def ram_bytes(self) -> int:
        """Estimated RAM of the index: codes + int64 ids + float32 centroids."""
        if self.kind == "flat":
            return 4 * self.n * self.dim
        code = self.dim if self.kind == "ivf_sq8" else self.pq_m * self.pq_nbits // 8
        return self.n * (code + 8) + 4 * self.nlist * self.dim


def _nearest_pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def plan_index(n: int, dim: int, memory_budget: int | None = None, kind: IndexKind | None = None) -> IndexPlan:
    """Pick the index for n vectors of width dim under ``memory_budget`` bytes (see module doc).

    ``kind`` forces a kind (parameters still follow the rules), e.g. to test IVF on small data.
    """
    if n <= 0:
        raise EmptyCacheError("cannot index an empty cache (0 features)")
    budget = int(memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET)
    if budget <= 0:
        raise CacheError(f"memory budget must be positive, got {memory_budget!r} bytes")
    if kind is None:
        kind = "flat" if n <= FLAT_MAX_N and 4 * n * dim <= budget else "ivf_pq"
    if kind == "flat":
        return IndexPlan("flat", n, dim)
    if kind not in ("ivf_sq8", "ivf_pq"):
        raise CacheError(f"unknown index kind {kind!r}; expected flat, ivf_sq8 or ivf_pq")
    if n < _MIN_IVF_N:
        raise CacheError(f"an inverted-file index needs at least {_MIN_IVF_N} features, got {n}; use flat")

    nlist = min(max(_nearest_pow2(math.sqrt(n)), 16), 65_536)
    while nlist > 1 and nlist * _MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    nprobe = min(nlist, max(32, nlist // 64))
    train_size = min(n, max(64 * nlist, 50_000), 300_000)
    centroid_bytes = 4 * nlist * dim
    per_vector = (budget - centroid_bytes) / n - 8  # bytes left per vector after its int64 id

    if kind == "ivf_sq8" and per_vector < dim:
        kind = "ivf_pq"  # SQ8 codes do not fit: fall through to PQ
    if kind == "ivf_sq8":
        return IndexPlan("ivf_sq8", n, dim, nlist=nlist, nprobe=nprobe, refine=4, train_size=train_size)

    # PQ fast-scan: 4-bit codes (16 centroids per sub-quantiser) whose lookup tables stay in SIMD
    # registers; at the same bytes per vector it scans ~7x faster than 8-bit PQ (measured here: 0.08
    # vs 0.6 ms per query at 300 k x 1024). m = dim/8 sub-vectors of 8 dims (m/2 = dim/16 bytes: 64 at
    # d = 1024), at least 16 for small dims; m must be even (two codes per byte) and divide dim, and
    # is lowered until the codes fit the budget.
    m = max(dim // 8, min(dim, 16))
    while m > 2 and (dim % m or m % 2 or m / 2 > per_vector):
        m -= 1
    if dim % m or m % 2 or m / 2 > per_vector:
        if per_vector >= dim:  # odd dims cannot be split into an even number of sub-vectors
            return IndexPlan("ivf_sq8", n, dim, nlist=nlist, nprobe=nprobe, refine=4, train_size=train_size)
        need = n * (1 + 8) + centroid_bytes
        raise CacheError(
            f"memory budget {budget} bytes is too small for {n} features of dim {dim} "
            f"(the smallest index needs ~{need} bytes)"
        )
    return IndexPlan(
        "ivf_pq", n, dim, nlist=nlist, nprobe=nprobe, pq_m=m, pq_nbits=4, refine=32, train_size=train_size,
    )


def _sample_rows(features: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A float32 copy of ``size`` rows spread over the whole array (sorted, so memmap reads stream)."""
    n = features.shape[0]
    if size >= n:
        return np.ascontiguousarray(features, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(features[rows], dtype=np.float32)


def train_coarse_centroids(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids [nlist,D] (unit rows) of a float32 sample [S,D].

    Above 64 lists faiss's own two-level clustering (``faiss.contrib.clustering``: √nlist coarse
    clusters, each split into sub-clusters in proportion to its size) — far faster than one k-means
    with nlist centroids; plain ``faiss.Kmeans`` below that, or when a coarse cluster is too small
    for its share of centroids (faiss refuses to make more centroids than points).
    """
    import faiss
    from faiss.contrib.clustering import two_level_clustering

    d = sample.shape[1]
    args = {"spherical": True, "seed": seed, "verbose": False, "min_points_per_centroid": 1}
    nc1 = max(1, round(math.sqrt(nlist)))
    cents = None
    if nc1 > 1 and nlist > 64:
        try:
            cents, _ = two_level_clustering(sample, nc1, nlist, rebalance=True, clustering_niter=20, **args)
        except RuntimeError:
            cents = None
    if cents is None:
        km = faiss.Kmeans(d, nlist, niter=20, **args)
        km.train(sample)
        cents = km.centroids
    cents = np.ascontiguousarray(cents, dtype=np.float32)
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    return cents


def _check_finite(block: np.ndarray, start: int | None) -> None:
    """Typed error for NaN/inf rows (faiss k-means aborts on them; a flat index would rank them
    arbitrarily). float16 storage also turns values beyond ±65504 into inf. ``start`` = row offset
    of ``block`` (None for the training sample, whose rows are not contiguous)."""
    ok = np.isfinite(block).all(axis=1)
    if ok.all():
        return
    bad = np.nonzero(~ok)[0][:5]
    where = f"rows {[int(start + b) for b in bad]}" if start is not None else "some rows"
    raise CacheError(
        f"cache features contain NaN or infinite values ({where}; float16 storage also overflows "
        "beyond ±65504): clean or normalise them first"
    )


def build_index(
    plan: IndexPlan,
    features: np.ndarray,
    *,
    chunk: int = 65_536,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Train (IVF kinds) and fill a CPU faiss index with ``features`` [n,D] (float16 memmap is fine).

    Rows are added in float32 chunks so RAM stays bounded; ``progress(rows_added)`` is called per
    chunk.
    """
    import faiss

    n, d = features.shape
    if plan.kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        sample = _sample_rows(features, plan.train_size)
        _check_finite(sample, None)
        quantizer = faiss.IndexFlatIP(d)
        if plan.kind == "ivf_sq8":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, plan.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFPQFastScan(
                quantizer, d, plan.nlist, plan.pq_m, plan.pq_nbits, faiss.METRIC_INNER_PRODUCT
            )
        quantizer.add(train_coarse_centroids(sample, plan.nlist))
        index.train(sample)  # quantizer already holds nlist centroids: trains only the codes
        index.nprobe = plan.nprobe
        del sample
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(features[start : start + chunk], dtype=np.float32)
        _check_finite(block, start)
        index.add(block)
        if progress is not None:
            progress(block.shape[0])
    return index


def to_search_device(index: Any) -> Any:
    """The index itself on CPU, or a GPU clone when faiss-gpu sees a GPU."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() <= 0:
        return index
    try:
        res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = True  # float16 lookup tables / storage: what faiss-gpu needs for large codes
        gpu = faiss.index_cpu_to_gpu(res, 0, index, co)
        gpu.referenced_resources = res  # keep the resources alive as long as the clone
        return gpu
    except Exception:  # noqa: BLE001 - an index kind faiss-gpu does not implement stays on CPU
        return index


def set_nprobe(index: Any, nprobe: int) -> None:
    """Set nprobe on a CPU IVF index (possibly wrapped) or its GPU clone."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
        return
    gpu = "Gpu" in type(index).__name__ and hasattr(faiss, "GpuParameterSpace")
    (faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()).set_index_parameter(index, "nprobe", nprobe)
