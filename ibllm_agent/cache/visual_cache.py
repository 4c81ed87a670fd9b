"""``VisualCache``: image features + a faiss index, queried for cache-enhanced encoding."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ibllm_agent.cache import store
from ibllm_agent.cache.enhance import check_settings, mix_with_neighbours
from ibllm_agent.cache.index import IndexKind, IndexPlan, set_nprobe, to_search_device
from ibllm_agent.cache.planner import DEFAULT_PLAN_QUERIES, DEFAULT_RECALL, RecallReport
from ibllm_agent.errors import CacheDimensionError, CacheError, EmptyCacheError

# faiss-gpu's k-selection handles at most this many results per query (GPU_MAX_SELECTION_K).
GPU_MAX_K = 2048


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _to_numpy_2d(x: Any, what: str) -> tuple[np.ndarray, bool]:
    """Any [D] / [B,D] array or tensor → float32 [B,D] (and whether it was 1-D)."""
    if _is_torch(x):
        x = x.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise CacheError(f"{what} must be a numeric array or tensor, got {type(x).__name__}") from None
    if arr.ndim == 1:
        return arr[None, :], True
    if arr.ndim != 2:
        raise CacheDimensionError(f"{what} must be [D] or [B, D], got shape {tuple(arr.shape)}")
    return arr, False


class VisualCache:
    """A cache of n image features [n, D] (float16, memory-mapped when loaded) and a faiss index.

    Make one with ``from_features``, ``build`` (encode image folders / tar shards / feature files),
    ``load`` (a saved cache dir) or ``from_faiss_index`` (the reference's plain ``knn.index``).
    ``enhance`` applies the reference's cache mixing per sample; ``search`` returns the exact top-k
    inner products and row indices; ``ids`` maps rows to the source they came from.
    """

    def __init__(
        self,
        index: Any,
        plan: IndexPlan,
        features: np.ndarray | None,
        ids: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
        path: Path | None = None,
    ):
        self.index = index
        self.plan = plan
        self.features = features  # [n, D] float16, or None for a foreign faiss index
        self.ids = list(ids) if ids is not None else None
        self.meta = dict(meta or {})
        self.path = path
        self.report: Any = None  # the BuildReport when made by ``build``
        self._search_index: Any = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_features(
        cls,
        features: Any,
        ids: Sequence[str] | None = None,
        *,
        memory_budget: int | None = None,
        index: IndexKind | None = None,
        meta: dict[str, Any] | None = None,
        recall: float | None = DEFAULT_RECALL,
        plan_queries: int = DEFAULT_PLAN_QUERIES,
    ) -> VisualCache:
        """Index an [n, D] array/tensor (kept as float16; a float16 memmap is used without a copy
        unless the plan keeps the features resident).

        ``ids`` names each row (default: none). ``index`` forces an index kind; by default it is
        chosen from n, D and ``memory_budget`` (bytes of RAM; default 4 GiB) by the rules in
        ``ibllm_agent.cache.index``. ``recall``: recall@10 target the search plan is measured to
        reach on ``plan_queries`` held-out rows (``ibllm_agent.cache.planner``); None keeps the
        sizing rules' nprobe/refine unmeasured.
        """
        if _is_torch(features):
            features = features.detach().to("cpu").float().numpy()
        if not (isinstance(features, np.ndarray) and features.dtype == np.float16):
            try:
                with np.errstate(over="ignore"):  # overflow → inf, reported by build_index as a CacheError
                    features = np.asarray(features, dtype=np.float16)
            except (TypeError, ValueError):
                raise CacheError(f"cache features must be a numeric [n, D] array, got {type(features).__name__}") from None
        if features.ndim != 2:
            raise CacheDimensionError(f"cache features must be [n, D], got shape {tuple(features.shape)}")
        n, d = features.shape
        if n == 0:
            raise EmptyCacheError("cannot build a visual cache from 0 features")
        if d == 0:
            raise CacheDimensionError("cache features have dimension 0")
        if ids is not None and len(ids) != n:
            raise CacheError(f"got {len(ids)} ids for {n} features; pass one id per row")
        from ibllm_agent.cache.planner import build_planned

        faiss_index, plan, report = build_planned(
            features, memory_budget=memory_budget, kind=index, recall=recall, queries=plan_queries
        )
        if plan.resident and store.is_mapped(features):
            features = np.array(features)  # the refinement store fits the budget: keep it in RAM
        meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(meta or {})}
        if memory_budget is not None:
            meta["memory_budget"] = int(memory_budget)
        if report is not None:
            meta["recall"] = report.to_dict()
        return cls(faiss_index, plan, features, ids, meta)

    @classmethod
    def load(cls, path: str | Path, *, mmap_index: bool = False) -> VisualCache:
        """Open a saved cache dir: features memory-mapped, index read (or mmapped) from index.faiss."""
        path = Path(path)
        meta = store.read_meta(path)
        count, dim = int(meta["count"]), int(meta["dim"])
        resident = bool(meta["index"].get("resident")) if isinstance(meta["index"], dict) else False
        features = store.open_features(path / store.FEATURES, count, dim, resident=resident)
        index = store.read_index(path / store.INDEX, mmap=mmap_index)
        if index.ntotal != count or index.d != dim:
            raise store.CorruptCacheError(
                f"index {path / store.INDEX} holds {index.ntotal} x {index.d} vectors but "
                f"{store.META} says {count} x {dim}"
            )
        try:
            plan = IndexPlan.from_dict(meta["index"])
        except (TypeError, ValueError) as exc:
            raise store.CorruptCacheError(f"cache metadata {path / store.META} has a bad index plan: {exc}") from None
        if plan.nprobe:
            set_nprobe(index, plan.nprobe)
        ids = store.read_ids(path / store.IDS, count) if meta.get("ids") else None
        return cls(index, plan, features, ids, meta, path)

    @classmethod
    def from_faiss_index(cls, path: str | Path, *, mmap: bool = False) -> VisualCache:
        """Wrap a plain faiss index file (e.g. the reference's 13 GB CC3M ``knn.index``).

        Neighbours are fetched with ``reconstruct_batch``; scores are the index's own (inner product
        for the reference's index; for an L2 index they are recomputed as inner products).
        ``mmap=True`` maps the file instead of reading it into RAM.
        """
        path = Path(path)
        index = store.read_index(path, mmap=mmap)
        if index.ntotal == 0:
            raise EmptyCacheError(f"faiss index {path} holds no vectors")
        plan = IndexPlan("external", int(index.ntotal), int(index.d))
        return cls(index, plan, None, None, {"source_index": str(path)}, None)

    @classmethod
    def build(
        cls,
        sources: Iterable[str | Path],
        out_dir: str | Path,
        *,
        encoder: Any = "huge_w3d",
        loader: Any = None,
        batch_size: int = 64,
        memory_budget: int | None = None,
        index: IndexKind | None = None,
        resume: bool = True,
        progress: bool = True,
        device: Any = None,
        recall: float | None = DEFAULT_RECALL,
    ) -> VisualCache:
        """Encode/collect features from ``sources`` into a cache saved at ``out_dir`` and return it.

        See ``ibllm_agent.cache.build.build_cache`` for sources, resuming and skipped images.
        """
        from ibllm_agent.cache.build import build_cache

        report = build_cache(
            sources, out_dir, encoder=encoder, loader=loader, batch_size=batch_size,
            memory_budget=memory_budget, index=index, resume=resume, progress=progress, device=device,
            recall=recall,
        )
        cache = cls.load(out_dir)
        cache.report = report  # the BuildReport (rows, skipped images, time)
        return cache

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write index + features + ids + metadata atomically to ``path`` (replacing a cache there)."""
        path = Path(path)
        features = self.features
        if features is None:  # foreign index: materialise its vectors once, in chunks
            features = _ReconstructedRows(self.index)
        meta = {**self.meta, "count": len(self), "dim": self.dim, "dtype": "float16", "index": self.plan.to_dict()}
        # self.index is always the CPU index (a GPU clone, if any, lives in _search_index).
        store.save_cache_dir(path, meta=meta, index=self.index, features=features, ids=self.ids)
        return path

    def save_plan(self) -> Path:
        """Rewrite only the metadata (search plan, measured recall) of the cache dir this was loaded
        from, atomically: what ``cache tune`` does after re-planning (data and index unchanged)."""
        if self.path is None:
            raise CacheError("this cache was not loaded from a directory; use save(path)")
        meta = {**self.meta, "count": len(self), "dim": self.dim, "dtype": "float16", "index": self.plan.to_dict()}
        meta.pop("format", None)
        meta.pop("version", None)
        store.replace_meta(self.path, meta)
        return self.path

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def info(self) -> dict[str, Any]:
        """Summary for ``ibllm-agent cache info``: size, index, memory, sources, skipped images."""
        out: dict[str, Any] = {
            "path": str(self.path) if self.path else None,
            "count": len(self),
            "dim": self.dim,
            "index": self.plan.kind,
            "index_params": self._index_params(),
            "index_ram_bytes": self.plan.ram_bytes() if self.plan.kind != "external" else None,
            "features_bytes": len(self) * self.dim * 2 if self.features is not None else None,
            "refine_store": None if self.features is None else ("ram" if self.plan.resident else "mmap"),
            "recall": self.meta.get("recall"),
        }
        for key in ("encoder", "sources", "skipped", "created", "memory_budget"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out

    def _index_params(self) -> dict[str, Any]:
        p = self.plan
        if p.kind == "ivf_pq":
            return {"nlist": p.nlist, "nprobe": p.nprobe, "pq_m": p.pq_m, "pq_nbits": p.pq_nbits, "refine": p.refine}
        if p.kind == "ivf_sq8":
            return {"nlist": p.nlist, "nprobe": p.nprobe, "refine": p.refine}
        if p.kind == "external":
            return {"faiss": type(self.index).__name__}
        return {}

    @property
    def recall_report(self) -> RecallReport | None:
        """What the recall planner measured when the plan was made (None: never planned)."""
        data = self.meta.get("recall")
        return RecallReport.from_dict(data) if isinstance(data, dict) else None

    def plan_for_recall(
        self,
        recall: float = DEFAULT_RECALL,
        *,
        memory_budget: int | None = None,
        queries: int = DEFAULT_PLAN_QUERIES,
    ) -> RecallReport:
        """Re-plan nprobe/refine (and refinement-store residency) of this IVF cache for ``recall``@10
        measured on held-out rows against exact search (``ibllm_agent.cache.planner``); kept by
        ``save``. ``memory_budget`` defaults to the one the cache was built with."""
        from ibllm_agent.cache.planner import plan_search

        if self.plan.kind not in ("ivf_pq", "ivf_sq8", "flat"):
            raise CacheError(f"only IVF caches can be planned; this one is {self.plan.kind!r} (a foreign faiss index)")
        budget = memory_budget if memory_budget is not None else self.meta.get("memory_budget")
        report = plan_search(self, recall, queries=queries, memory_budget=budget)
        if self.plan.resident and store.is_mapped(self.features):
            self.features = np.array(self.features)  # the refinement store now fits the budget: RAM
        if memory_budget is not None:
            self.meta["memory_budget"] = int(memory_budget)
        self.meta["recall"] = report.to_dict()
        return report

    def tune(self, *, nprobe: int | None = None, refine: int | None = None) -> VisualCache:
        """Trade latency for recall on an IVF cache by hand (kept by ``save``): ``nprobe`` lists
        scanned, ``refine``·k candidates re-scored exactly. ``plan_for_recall`` picks them by
        measurement instead. Measured at 3 M x 1024 on hard (flat-neighbourhood) data: refine 32 →
        recall@10 0.91 at p50 1.0 ms, refine 64 → 0.97 at 1.8 ms."""
        from dataclasses import replace

        if self.plan.kind not in ("ivf_pq", "ivf_sq8"):
            raise CacheError(f"only IVF caches can be tuned; this one is {self.plan.kind!r} (exact or foreign)")
        for name, value in (("nprobe", nprobe), ("refine", refine)):
            if value is not None and int(value) < 1:
                raise CacheError(f"{name} must be >= 1, got {value!r}")
        self.meta.pop("recall", None)  # the measured recall no longer describes this plan
        self.plan = replace(
            self.plan,
            nprobe=min(int(nprobe), self.plan.nlist) if nprobe is not None else self.plan.nprobe,
            refine=int(refine) if refine is not None else self.plan.refine,
        )
        set_nprobe(self.index, self.plan.nprobe)
        self._search_index = None
        return self

    # ---------------------------------------------------------------- queries
    def _searcher(self) -> Any:
        if self._search_index is None:
            self._search_index = to_search_device(self.index) if self.plan.kind != "external" else self.index
            if self.plan.nprobe:
                set_nprobe(self._search_index, self.plan.nprobe)
        return self._search_index

    def _prepare(self, q: Any, what: str) -> tuple[np.ndarray, bool]:
        arr, squeezed = _to_numpy_2d(q, what)
        if arr.shape[1] != self.dim:
            raise CacheDimensionError(f"{what} has dimension {arr.shape[1]} but the cache holds {self.dim}-d features")
        if len(self) == 0:
            raise EmptyCacheError("the visual cache is empty")
        if not np.isfinite(arr).all():
            # faiss would return no neighbours (rows -1) and the mix would turn the row into NaN.
            bad = sorted({int(b) for b in np.nonzero(~np.isfinite(arr))[0]})
            raise CacheError(f"{what} holds NaN or infinite values (rows {bad[:5]})")
        return np.ascontiguousarray(arr), squeezed

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """Cached vectors for row indices idx [...] → [..., D] float32."""
        flat = idx.reshape(-1)
        if self.features is not None:
            vecs = np.asarray(self.features[flat], dtype=np.float32)
        else:
            vecs = _reconstruct(self.index, flat)
        return vecs.reshape(*idx.shape, self.dim)

    def neighbours(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of float32 queries q [B,D]: scores [B,k], rows [B,k], vectors [B,k,D], valid [B,k].

        ``valid`` is False where an approximate index found fewer than k candidates (row -1).
        """
        k = min(int(k), len(self))
        index = self._searcher()
        wanted = k if self.plan.kind in ("flat", "external") else min(len(self), max(k * self.plan.refine, k))
        if wanted > GPU_MAX_K and index is not self.index:
            index = self.index  # faiss-gpu searches return at most 2048 results; the CPU index has no limit
        if self.plan.kind in ("flat", "external"):
            scores, rows = index.search(q, k)
            valid = rows >= 0
            rows = np.where(valid, rows, 0)
            vecs = self._rows(rows)
            if self.plan.kind == "external" and getattr(index, "metric_type", 0) != 0:  # 0 = METRIC_INNER_PRODUCT
                scores = np.einsum("bd,bkd->bk", q, vecs)
            return scores.astype(np.float32), rows, vecs, valid
        # IVF: approximate candidates, then exact inner products from the float16 features.
        n_cand = min(len(self), max(k * self.plan.refine, k))
        _, cand = index.search(q, n_cand)
        cvalid = cand >= 0
        cand = np.where(cvalid, cand, 0)
        cvecs = self._rows(cand)  # [B,C,D]
        exact = np.einsum("bd,bcd->bc", q, cvecs)
        exact = np.where(cvalid, exact, -np.inf)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # [B,k]
        scores = np.take_along_axis(exact, order, 1)
        rows = np.take_along_axis(cand, order, 1)
        valid = np.take_along_axis(cvalid, order, 1)
        vecs = np.take_along_axis(cvecs, order[:, :, None], 1)
        scores = np.where(valid, scores, 0.0).astype(np.float32)
        return scores, rows, vecs, valid

    def search(self, q: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact-score top-k by inner product: (scores [B,k] float32, rows [B,k] int64; -1 = none).

        q is [D] or [B,D] (numpy or torch). Rows index ``features``/``ids``.
        """
        arr, _ = self._prepare(q, "query")
        check_settings(k, 0.0, 0.0)  # k: a number >= 1 (typed error otherwise)
        scores, rows, _, valid = self.neighbours(arr, k)
        return scores, np.where(valid, rows, -1)

    def ids_of(self, rows: np.ndarray) -> list[list[str | None]]:
        """Source ids for rows [B,k] (row numbers as strings when the cache has no ids)."""
        return [
            [None if r < 0 else (self.ids[r] if self.ids is not None else str(int(r))) for r in row]
            for row in np.atleast_2d(rows)
        ]

    def enhance(
        self,
        feats: Any,
        k: int = 10,
        t: float = 20.0,
        alpha: float = 0.5,
        *,
        settings: Any = None,
    ) -> Any:
        """Cache-enhance features [B,D] (or [D]); returns the same type, shape, dtype and device.

        Per sample: top-k cached features by inner product s; w = softmax(t·s); r = Σ w_i·x_i,
        r ← r/‖r‖; out = normalise((1−alpha)·f + alpha·r). ``settings`` (an
        ``ibllm_agent.types.CacheSettings``) overrides k/t/alpha and, with ``enabled=False``,
        returns ``feats`` unchanged. Not differentiable (the reference runs it without gradients).
        """
        if settings is not None:
            if not settings.enabled:
                return feats
            k, t, alpha = settings.k, settings.t, settings.alpha
        check_settings(k, t, alpha)
        arr, squeezed = self._prepare(feats, "features to enhance")
        scores, _, vecs, valid = self.neighbours(arr, k)
        out = mix_with_neighbours(arr, scores, vecs, t=float(t), alpha=float(alpha), valid=valid)
        if squeezed:
            out = out[0]
        if _is_torch(feats):
            import torch

            return torch.from_numpy(out).to(device=feats.device, dtype=feats.dtype)
        return out.astype(np.asarray(feats).dtype if np.asarray(feats).dtype.kind == "f" else np.float32)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"VisualCache(n={len(self)}, dim={self.dim}, index={self.plan.kind!r}{where})"


def _reconstruct(index: Any, rows: np.ndarray) -> np.ndarray:
    """Vectors of a foreign faiss index by id; IVF indexes get a direct map on first use."""
    import faiss

    rows = np.ascontiguousarray(rows, dtype=np.int64)
    try:
        return index.reconstruct_batch(rows)
    except RuntimeError:
        try:
            faiss.extract_index_ivf(index).make_direct_map()
            return index.reconstruct_batch(rows)
        except RuntimeError as exc:
            raise CacheError(
                f"this faiss index ({type(index).__name__}) cannot return stored vectors: {str(exc).splitlines()[0]}"
            ) from None


class _ReconstructedRows:
    """Array-like [n, D] view of a faiss index's vectors (for saving a foreign index as a cache)."""

    def __init__(self, index: Any):
        self.index = index
        self.shape = (int(index.ntotal), int(index.d))

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.shape[0])
        return _reconstruct(self.index, np.arange(start, stop))
