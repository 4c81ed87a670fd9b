"""Recall-targeted search plans: a cache measures its own recall and picks nprobe/refine.

An IVF cache answers a query by scanning ``nprobe`` inverted lists and re-scoring ``refine·k``
candidates exactly (``ibllm_agent.cache.index``). Which settings reach a given recall depends on the
data (measured at 3 M x 1024: refine 32 gave recall@10 0.91 on flat-neighbourhood data, 1.0 on
clustered data), so fixed rules either miss the target or waste time. The planner measures instead:

1. **Held-out sample.** ``queries`` rows (default 256) spread over the data are used as queries,
   leave-one-out: each query's own row is dropped from its results and from its ground truth, so
   the sample behaves like new images of the same distribution (a query found as its own
   neighbour would inflate recall).
2. **Exact ground truth**: top-k by inner product over all stored float16 rows (float32 math, in
   chunks, the same numbers the cache's exact re-scoring computes).
3. **Recall grid.** For each nprobe (powers of two up to nlist) one batched search returns the
   largest candidate list; for refine r the re-scored top-k is the true top-k restricted to the
   first r·k candidates, so recall@k = the share of true neighbours among those candidates — every
   refine level is read off one search, with no re-scoring. A setting counts as reaching the target
   when its recall minus one standard error (over queries) does, so that the plan picked as the
   cheapest on this sample still holds on new queries.
4. **Latency.** For each refine level, the smallest nprobe reaching the target is timed with single
   queries through ``VisualCache.neighbours`` (the path ``enhance`` takes), interleaved in rounds
   so machine noise hits every candidate alike; the lowest mean latency wins (the mean, not p50, so
   a plan with a heavy tail loses).
5. **Escalation.** If no setting of the index reaches the target (near-uniform data that 4-bit PQ
   ranks poorly), the next index that fits the memory budget is built and planned: ivf_pq →
   ivf_sq8 → flat (exact). If none reaches it, the best recall found is kept and the report says
   the target was missed.

**Refinement store.** The exact re-scoring reads refine·k rows of the float16 features per query.
When the index plus the features (2·n·D bytes) fit ``memory_budget``, the plan marks them
``resident`` and ``VisualCache.load`` reads them into RAM, so no query waits on a page fault (the
p99 of a cold memory map: 15 ms vs 2.8 ms p50 at 3 M). Otherwise they stay memory-mapped and the
load asks the kernel to read them ahead (``MADV_WILLNEED``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ibllm_agent.cache.index import DEFAULT_MEMORY_BUDGET, IndexKind, IndexPlan, build_index, plan_index, set_nprobe
from ibllm_agent.errors import CacheError

if TYPE_CHECKING:
    from ibllm_agent.cache.visual_cache import VisualCache

DEFAULT_RECALL = 0.95
DEFAULT_PLAN_QUERIES = 256
DEFAULT_K = 10  # CacheSettings.k: the reference enhances with 10 neighbours
REFINES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_QUERIES = 48  # single queries timed per candidate and round
_TIME_ROUNDS = 3


@dataclass(frozen=True)
class RecallReport:
    """What the planner measured (stored as ``meta.json["recall"]``, shown by ``cache info``)."""

    target: float
    k: int
    recall: float
    met: bool
    queries: int
    method: str = "measured"  # "measured" (held-out sample vs exact search) or "exact" (flat index)
    p50_ms: float | None = None
    p99_ms: float | None = None
    seconds: float = 0.0
    tried: list[dict[str, Any]] = field(default_factory=list)  # candidates: kind, nprobe, refine, recall, ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecallReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def summary(self) -> str:
        if self.method == "exact":
            return f"recall@{self.k} 1.0 (exact index; target {self.target:g})"
        text = (f"recall@{self.k} {self.recall:.3f} on {self.queries} held-out queries "
                f"(target {self.target:g}{'' if self.met else ', NOT met'})")
        if self.p50_ms is not None:
            text += f", p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
        return text


def check_target(recall: float) -> float:
    try:
        value = float(recall)
    except (TypeError, ValueError):
        raise CacheError(f"recall target must be a number in (0, 1], got {recall!r}") from None
    if not 0.0 < value <= 1.0:
        raise CacheError(f"recall target must lie in (0, 1], got {recall!r}")
    return value


def fits_resident(plan: IndexPlan, memory_budget: int) -> bool:
    """Whether the index and the float16 refinement store (2·n·D bytes) fit the budget together."""
    return plan.kind in ("ivf_pq", "ivf_sq8") and plan.ram_bytes() + 2 * plan.n * plan.dim <= memory_budget


# ------------------------------------------------------------------------------------ measuring
def holdout_rows(n: int, queries: int, seed: int = 0) -> np.ndarray:
    """``queries`` distinct rows spread over [0, n), sorted (memmap reads stream)."""
    q = min(int(queries), n)
    return np.sort(np.random.default_rng(seed).choice(n, size=q, replace=False))


def exact_neighbours(features: np.ndarray, rows: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """Exact top-k rows [Q,k] by inner product for the queries ``features[rows]``, each query's own row
    excluded (float32 math over the float16 rows; -1 where fewer than k other rows exist)."""
    import faiss

    queries = np.ascontiguousarray(features[rows], dtype=np.float32)
    kk = k + 1
    best_s = np.full((len(rows), kk), -np.inf, dtype=np.float32)
    best_i = np.full((len(rows), kk), -1, dtype=np.int64)
    n = features.shape[0]
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(features[start : start + chunk], dtype=np.float32)
        s, i = faiss.knn(queries, block, min(kk, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([best_s, s], 1)
        cand_i = np.concatenate([best_i, np.where(i >= 0, i + start, -1)], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :kk]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return _drop_self(best_i, rows, k)


def _drop_self(ids: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """ids [Q,C] without each query's own row (or its last column when absent) → [Q,width]."""
    keep = ids != rows[:, None]
    # Rows that do not contain self lose their last column instead, so every row keeps C-1 entries.
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    out = ids[keep].reshape(ids.shape[0], ids.shape[1] - 1)
    return out[:, :width]


def truth_positions(cand: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Position of each true neighbour in the candidate lists: cand [Q,C], truth [Q,k] → [Q,k] float
    (inf when absent; truth -1 slots count as found at position 0, they are not real neighbours)."""
    eq = cand[:, None, :] == truth[:, :, None]  # [Q,k,C]
    found = eq.any(-1)
    pos = np.where(found, eq.argmax(-1), np.inf).astype(np.float64)
    return np.where(truth < 0, 0.0, pos)


def recall_of(pos: np.ndarray, limit: int) -> float:
    return float(np.mean(pos < limit))


def recall_bound(pos: np.ndarray, limit: int) -> float:
    """Mean recall minus one standard error over queries: a plan is accepted on this bound, so the
    target still holds on new queries and not only on the sample it was picked on."""
    per_query = np.mean(pos < limit, axis=1)
    return float(per_query.mean() - per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else float(per_query.mean())


def _nprobes(nlist: int) -> list[int]:
    out, p = [], 1
    while p < nlist:
        out.append(p)
        p *= 2
    return out + [nlist]


def recall_grid(cache: VisualCache, rows: np.ndarray, truth: np.ndarray, k: int) -> list[dict[str, Any]]:
    """recall@k for every (nprobe, refine) of an IVF cache, from one search per nprobe.

    Stops raising nprobe once the largest refine level has reached recall 1.0 (more lists cannot help).
    """
    n = len(cache)
    refines = [r for r in REFINES if r * k < n] or [1]
    if refines[-1] * k < n - 1 and refines[-1] != REFINES[-1]:
        refines.append(refines[-1] * 2)
    c_max = min(n, refines[-1] * k + 1)  # +1: the query's own row occupies one slot
    queries = np.ascontiguousarray(cache.features[rows], dtype=np.float32) if cache.features is not None else None
    if queries is None:
        raise CacheError("recall planning needs the cache's stored features")
    # The CPU index: the grid asks for up to 2561 candidates, beyond faiss-gpu's k limit (2048).
    index = cache.index
    grid = []
    for nprobe in _nprobes(cache.plan.nlist):
        set_nprobe(index, nprobe)
        _, cand = index.search(queries, c_max)
        cand = _drop_self(cand, rows, c_max - 1)
        pos = truth_positions(cand, truth)
        for r in refines:
            grid.append({"kind": cache.plan.kind, "nprobe": nprobe, "refine": r, "recall": recall_of(pos, r * k),
                         "bound": recall_bound(pos, r * k)})
        if recall_of(pos, refines[-1] * k) >= 1.0:
            break
    set_nprobe(index, cache.plan.nprobe)
    return grid


def _time_settings(cache: VisualCache, settings: list[tuple[int, int]], queries: np.ndarray, k: int) -> list[np.ndarray]:
    """Single-query latencies (s) of ``neighbours`` under each (nprobe, refine), in interleaved rounds."""
    lat: list[list[float]] = [[] for _ in settings]
    saved = cache.plan
    try:
        for _ in range(_TIME_ROUNDS):
            for i, (nprobe, refine) in enumerate(settings):
                cache.tune(nprobe=nprobe, refine=refine)
                cache.neighbours(queries[:1], k)  # warm-up (GPU clone, first-touch)
                for q in queries:
                    t0 = time.perf_counter()
                    cache.neighbours(q[None, :], k)
                    lat[i].append(time.perf_counter() - t0)
    finally:
        cache.plan = saved
        cache._search_index = None
    return [np.asarray(x) for x in lat]


# ------------------------------------------------------------------------------------ planning
def plan_search(
    cache: VisualCache,
    target: float = DEFAULT_RECALL,
    *,
    k: int = DEFAULT_K,
    queries: int = DEFAULT_PLAN_QUERIES,
    memory_budget: int | None = None,
    seed: int = 0,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> RecallReport:
    """Set the cache's nprobe/refine to the fastest setting reaching ``target`` recall@k; return what
    was measured. Flat caches are exact (recall 1.0, nothing to plan). ``truth`` = (rows, exact
    neighbours) to reuse across indexes of the same data."""
    target = check_target(target)
    t0 = time.perf_counter()
    plan = cache.plan
    budget = int(memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET)
    if plan.kind == "flat":
        return RecallReport(target, k, 1.0, True, 0, method="exact")
    if plan.kind not in ("ivf_pq", "ivf_sq8"):
        raise CacheError(f"only IVF caches can be planned; this one is {plan.kind!r} (a foreign faiss index)")
    if cache.features is None:
        raise CacheError("recall planning needs the cache's stored features")
    n = len(cache)
    k = max(1, min(int(k), n - 1))
    rows, exact = truth if truth is not None else (None, None)
    if rows is None:
        rows = holdout_rows(n, queries, seed)
        exact = exact_neighbours(cache.features, rows, k)
    grid = recall_grid(cache, rows, exact, k)

    # Per refine level, the smallest nprobe reaching the target (recall grows with nprobe).
    best_per_refine: dict[int, dict[str, Any]] = {}
    for g in grid:
        if g["bound"] >= min(target, 1.0 - 1e-9) and g["refine"] not in best_per_refine:
            best_per_refine[g["refine"]] = g
    met = bool(best_per_refine)
    if met:
        cands = sorted(best_per_refine.values(), key=lambda g: g["refine"])
    else:  # keep the best recall found, at the lowest refine/nprobe giving it
        top = max(g["recall"] for g in grid)
        cands = [min((g for g in grid if g["recall"] == top), key=lambda g: (g["refine"] * g["nprobe"]))]
    timing_q = np.ascontiguousarray(cache.features[rows[:_TIME_QUERIES]], dtype=np.float32)
    lats = _time_settings(cache, [(g["nprobe"], g["refine"]) for g in cands], timing_q, k)
    for g, lat in zip(cands, lats):
        g["mean_ms"], g["p50_ms"], g["p99_ms"] = (1e3 * float(lat.mean()), 1e3 * float(np.percentile(lat, 50)),
                                                   1e3 * float(np.percentile(lat, 99)))
    best = min(cands, key=lambda g: g["mean_ms"])
    cache.plan = replace(plan, nprobe=best["nprobe"], refine=best["refine"], resident=fits_resident(plan, budget))
    cache._search_index = None
    set_nprobe(cache.index, best["nprobe"])
    return RecallReport(
        target, k, best["recall"], met, len(rows), p50_ms=round(best["p50_ms"], 3), p99_ms=round(best["p99_ms"], 3),
        seconds=round(time.perf_counter() - t0, 2),
        tried=[{key: (round(v, 4) if isinstance(v, float) else v) for key, v in g.items()} for g in cands],
    )


def _escalation(kind: IndexKind | None, first: IndexPlan, budget: int) -> list[IndexPlan]:
    """Indexes to try after ``first`` misses the target (only when the kind was not forced)."""
    if kind is not None:
        return []
    out = []
    if first.kind == "ivf_pq":
        sq = plan_index(first.n, first.dim, budget, "ivf_sq8")
        if sq.kind == "ivf_sq8" and sq.ram_bytes() <= budget:
            out.append(sq)
    if 4 * first.n * first.dim <= budget:
        out.append(IndexPlan("flat", first.n, first.dim))
    return out


def build_planned(
    features: np.ndarray,
    *,
    memory_budget: int | None = None,
    kind: IndexKind | None = None,
    recall: float | None = DEFAULT_RECALL,
    k: int = DEFAULT_K,
    queries: int = DEFAULT_PLAN_QUERIES,
    progress: Any = None,
) -> tuple[Any, IndexPlan, RecallReport | None]:
    """Build the index ``plan_index`` picks and plan it for ``recall`` (None: the sizing rules only),
    escalating to a larger index within the budget when the target is out of reach.

    Returns (faiss index, plan, report). ``progress(rows)`` is called while rows are added.
    """
    from ibllm_agent.cache.visual_cache import VisualCache

    budget = int(memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET)
    plan = plan_index(features.shape[0], features.shape[1], memory_budget, kind)
    index = build_index(plan, features, progress=progress)
    if recall is None:
        return index, plan, None
    target = check_target(recall)
    cache = VisualCache(index, plan, features)
    report = plan_search(cache, target, k=k, queries=queries, memory_budget=budget)
    if report.met or report.method == "exact":
        return cache.index, cache.plan, report
    first = (cache.index, cache.plan, report)
    rows = holdout_rows(len(cache), queries)
    truth = (rows, exact_neighbours(features, rows, report.k))
    tried = list(report.tried)
    best = first
    for alt in _escalation(kind, plan, budget):
        alt_index = build_index(alt, features)
        alt_cache = VisualCache(alt_index, alt, features)
        alt_report = plan_search(alt_cache, target, k=k, queries=queries, memory_budget=budget, truth=truth)
        tried += alt_report.tried
        if alt_report.method == "exact" or alt_report.recall > best[2].recall:
            best = (alt_cache.index, alt_cache.plan, alt_report)
        if alt_report.met:
            break
    index, plan, report = best
    return index, plan, replace(report, tried=tried)
