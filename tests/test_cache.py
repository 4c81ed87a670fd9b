"""VisualCache: enhancement math, search, index rules, save/load, foreign faiss indexes, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from helpers import clustered, unit

from ibllm_agent import CacheSettings, VisualCache
from ibllm_agent.cache import store
from ibllm_agent.cache.index import plan_index
from ibllm_agent.errors import (
    CacheDimensionError,
    CacheError,
    CorruptCacheError,
    EmptyCacheError,
    IbllmError,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # see tests/conftest.py


def reference_enhance(f: np.ndarray, bank: np.ndarray, k: int, t: float, alpha: float) -> np.ndarray:
    """Direct float64 transcription of the reference math, one sample at a time."""
    out = []
    for q in f.astype(np.float64):
        s = bank.astype(np.float64) @ q
        top = np.argsort(-s)[:k]
        w = np.exp(t * s[top] - np.max(t * s[top]))
        w /= w.sum()
        r = (w[:, None] * bank[top].astype(np.float64)).sum(0)
        r /= np.linalg.norm(r)
        mixed = (1 - alpha) * q + alpha * r
        out.append(mixed / np.linalg.norm(mixed))
    return np.stack(out)


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return clustered(3000, 32)


@pytest.fixture(scope="module")
def flat_cache(bank) -> VisualCache:
    return VisualCache.from_features(bank, ids=[f"img{i}" for i in range(len(bank))])


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (0.8 * clustered(6, 32, seed=3) + 0.2 * unit(rng.standard_normal((6, 32)))).astype(np.float32)


# ------------------------------------------------------------------------------------------ math
@pytest.mark.parametrize("k,t,alpha", [(10, 20.0, 0.5), (1, 20.0, 0.5), (25, 5.0, 0.2), (10, 100.0, 0.9)])
def test_enhance_matches_direct_numpy(flat_cache, bank, queries, k, t, alpha):
    got = flat_cache.enhance(queries, k=k, t=t, alpha=alpha)
    want = reference_enhance(queries, bank, k, t, alpha)
    assert got.shape == queries.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    # The mix really moved the features (alpha > 0): not the plain normalised input.
    assert np.abs(got - unit(queries)).max() > 1e-3


def test_enhance_unnormalised_query_follows_reference(flat_cache, bank):
    # The fused feature f is not normalised in the reference when modalities disagree (norm < 1).
    f = 0.3 * clustered(2, 32, seed=11)
    np.testing.assert_allclose(flat_cache.enhance(f), reference_enhance(f, bank, 10, 20.0, 0.5), atol=2e-6)


def test_missing_neighbours_are_ignored_not_mixed_in():
    """An approximate index may return fewer than k rows: masked slots get zero weight."""
    from ibllm_agent.cache.enhance import mix_with_neighbours

    rng = np.random.default_rng(0)
    f = unit(rng.standard_normal((2, 8)))
    nb = unit(rng.standard_normal((2, 4, 8)))
    s = np.einsum("bd,bkd->bk", f, nb)
    valid = np.array([[True, True, False, False], [True, False, False, False]])
    got = mix_with_neighbours(f, s, nb, t=20.0, alpha=0.5, valid=valid)
    want0 = mix_with_neighbours(f[:1], s[:1, :2], nb[:1, :2], t=20.0, alpha=0.5)
    want1 = mix_with_neighbours(f[1:], s[1:, :1], nb[1:, :1], t=20.0, alpha=0.5)
    np.testing.assert_allclose(got, np.concatenate([want0, want1]), atol=1e-7)
    none = mix_with_neighbours(f, s, nb, valid=np.zeros((2, 4), bool))
    np.testing.assert_allclose(none, f.astype(np.float32), atol=1e-7)  # r = 0: normalise(f)


def test_batch_equals_per_sample(flat_cache, queries):
    batch = flat_cache.enhance(queries, k=7, t=15.0, alpha=0.4)
    singles = np.stack([flat_cache.enhance(q, k=7, t=15.0, alpha=0.4) for q in queries])
    np.testing.assert_array_equal(batch, singles)


def test_alpha_zero_is_normalised_input_and_alpha_one_is_neighbour_mean(flat_cache, bank, queries):
    np.testing.assert_allclose(flat_cache.enhance(queries, alpha=0.0), unit(queries), atol=1e-6)
    r = flat_cache.enhance(queries[:1], k=1, alpha=1.0)[0]
    nearest = bank[np.argmax(bank @ queries[0])]
    np.testing.assert_allclose(r, unit(nearest), atol=1e-6)


def test_enhance_torch_keeps_type_dtype_device_and_shape(flat_cache, queries):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(queries).to(torch.float16)
    out = flat_cache.enhance(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float16 and out.device == x.device
    np.testing.assert_allclose(out.float().numpy(), flat_cache.enhance(x.float().numpy()), atol=2e-3)
    one = flat_cache.enhance(torch.from_numpy(queries[0]))
    assert one.shape == (32,) and one.dtype == torch.float32


def test_cache_settings_per_call(flat_cache, queries):
    off = flat_cache.enhance(queries, settings=CacheSettings(enabled=False))
    assert off is queries
    on = flat_cache.enhance(queries, settings=CacheSettings(k=3, t=8.0, alpha=0.7))
    np.testing.assert_array_equal(on, flat_cache.enhance(queries, k=3, t=8.0, alpha=0.7))
    assert not np.allclose(on, flat_cache.enhance(queries))


def test_search_is_exact_for_flat(flat_cache, bank, queries):
    scores, rows = flat_cache.search(queries, k=5)
    want = np.argsort(-(queries @ bank.T), axis=1)[:, :5]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ bank.T, want, 1), atol=1e-5)
    assert flat_cache.ids_of(rows[:1])[0][0] == f"img{want[0, 0]}"


def test_k_larger_than_cache_uses_all_rows():
    small = clustered(4, 8)
    cache = VisualCache.from_features(small)
    _, rows = cache.search(small[0], k=10)
    assert rows.shape == (1, 4) and sorted(rows[0]) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ index rules
def test_plan_index_rules():
    assert plan_index(1000, 1024).kind == "flat"
    assert plan_index(20_000, 1024).kind == "flat"
    assert plan_index(20_001, 1024).kind == "ivf_pq"
    mid = plan_index(200_000, 1024)
    assert (mid.kind, mid.nlist, mid.nprobe, mid.refine) == ("ivf_pq", 512, 32, 32)
    sq = plan_index(200_000, 1024, kind="ivf_sq8")
    assert (sq.kind, sq.nlist, sq.refine) == ("ivf_sq8", 512, 4)
    one_m = plan_index(1_000_000, 1024)
    assert (one_m.kind, one_m.nlist, one_m.nprobe, one_m.pq_m, one_m.pq_nbits) == ("ivf_pq", 1024, 32, 128, 4)
    three_m = plan_index(3_000_000, 1024)
    assert (three_m.nlist, three_m.nprobe, three_m.refine) == (2048, 32, 32)
    assert three_m.ram_bytes() < 4 * 2**30
    # A small cache that does not fit as float32 is not flat.
    assert plan_index(10_000, 1024, memory_budget=20 * 2**20).kind != "flat"
    # A tight budget shrinks the PQ code (fewer bytes per vector) instead of failing.
    tight = plan_index(3_000_000, 1024, memory_budget=int(0.15 * 2**30))
    assert tight.kind == "ivf_pq" and tight.pq_m < 128 and tight.ram_bytes() <= 0.15 * 2**30
    with pytest.raises(CacheError, match="at least 64"):
        plan_index(10, 8, kind="ivf_pq")
    with pytest.raises(CacheError, match="too small"):
        plan_index(3_000_000, 1024, memory_budget=10 * 2**20)
    with pytest.raises(EmptyCacheError):
        plan_index(0, 1024)


@pytest.mark.parametrize("kind", ["ivf_sq8", "ivf_pq"])
def test_ivf_recall_and_exact_scores(kind):
    data = clustered(20_050, 32, seed=1, clusters=200)
    bank, q = data[:20_000], data[20_000:]  # queries from the same distribution, not in the cache
    cache = VisualCache.from_features(bank, index=kind)
    assert cache.plan.kind == kind and cache.plan.nlist >= 16
    scores, rows = cache.search(q, k=10)
    truth = np.argsort(-(q @ bank.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])
    assert recall >= 0.9
    # Returned scores are exact inner products with the stored (float16) rows, sorted.
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q, bank[rows]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_tune_changes_candidates_and_is_saved(tmp_path):
    data = clustered(20_050, 32, seed=1, clusters=200)
    bank, q = data[:20_000], data[20_000:]
    cache = VisualCache.from_features(bank, index="ivf_pq")
    # With one probe and one candidate per neighbour, recall drops; generous settings restore it.
    truth = np.argsort(-(q @ bank.T), axis=1)[:, :10]

    def recall():
        rows = cache.search(q, 10)[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])

    cache.tune(nprobe=1, refine=1)
    low = recall()
    cache.tune(nprobe=64, refine=64)
    assert recall() > low and recall() >= 0.95
    cache.save(tmp_path / "c")
    loaded = VisualCache.load(tmp_path / "c")
    assert (loaded.plan.nprobe, loaded.plan.refine) == (64, 64)
    assert faiss.extract_index_ivf(loaded.index).nprobe == 64
    with pytest.raises(CacheError, match="only IVF"):
        VisualCache.from_features(bank[:100]).tune(refine=4)
    with pytest.raises(CacheError, match="refine must"):
        cache.tune(refine=0)


# ------------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("kind", ["flat", "ivf_pq"])
def test_save_load_same_results(tmp_path, kind, queries):
    bank = clustered(5000, 32, seed=4)
    ids = [f"a/{i}.jpg" for i in range(len(bank))]
    cache = VisualCache.from_features(bank, ids=ids, index=kind)
    cache.save(tmp_path / "c")
    loaded = VisualCache.load(tmp_path / "c")
    assert loaded.features.dtype == np.float16
    # A flat cache maps its features; a planned IVF cache whose features fit the budget reads them into RAM.
    from ibllm_agent.cache.store import is_mapped

    assert is_mapped(loaded.features) == (kind == "flat") and loaded.plan.resident == (kind != "flat")
    assert len(loaded) == 5000 and loaded.dim == 32 and loaded.ids == ids and loaded.plan == cache.plan
    for a, b in zip(cache.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cache.enhance(queries), loaded.enhance(queries))
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["count"] == 5000 and meta["index"]["kind"] == kind
    # Saving a loaded (memory-mapped) cache over its own directory works and keeps the data.
    loaded.save(tmp_path / "c")
    again = VisualCache.load(tmp_path / "c")
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(loaded.features))
    np.testing.assert_array_equal(again.enhance(queries), cache.enhance(queries))


def test_save_is_atomic_and_replaces(tmp_path, monkeypatch, queries):
    a = VisualCache.from_features(clustered(300, 32, seed=5))
    b = VisualCache.from_features(clustered(400, 32, seed=6))
    a.save(tmp_path / "c")

    def boom(path, index):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        b.save(tmp_path / "c")
    monkeypatch.undo()
    # The failed save left the old cache intact and no temp dirs behind.
    assert len(VisualCache.load(tmp_path / "c")) == 300
    assert sorted(os.listdir(tmp_path)) == ["c"]
    b.save(tmp_path / "c")
    assert len(VisualCache.load(tmp_path / "c")) == 400
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_save_refuses_to_replace_a_directory_with_other_files(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(CacheError, match="thesis.tex"):
        VisualCache.from_features(clustered(10, 8)).save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="not a directory"):
        VisualCache.from_features(clustered(10, 8)).save(tmp_path / "file")


def test_load_errors(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        VisualCache.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="meta.json is missing"):
        VisualCache.load(tmp_path / "empty")
    (tmp_path / "partial" / ".build").mkdir(parents=True)
    with pytest.raises(CacheError, match="unfinished build"):
        VisualCache.load(tmp_path / "partial")

    VisualCache.from_features(clustered(300, 32)).save(tmp_path / "c")
    index_file = tmp_path / "c" / "index.faiss"
    good = index_file.read_bytes()
    index_file.write_bytes(good[: len(good) // 3])
    with pytest.raises(CorruptCacheError, match="corrupt"):
        VisualCache.load(tmp_path / "c")
    index_file.write_bytes(b"garbage" * 10)
    with pytest.raises(CorruptCacheError):
        VisualCache.load(tmp_path / "c")
    index_file.write_bytes(good)
    feats = tmp_path / "c" / "features.f16"
    feats.write_bytes(feats.read_bytes()[:-2])
    with pytest.raises(CorruptCacheError, match="expected"):
        VisualCache.load(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text("{not json")
    with pytest.raises(CorruptCacheError):
        VisualCache.load(tmp_path / "c")


# ------------------------------------------------------------------------------------------ foreign index
def test_reads_plain_faiss_index_like_the_reference(tmp_path, queries):
    bank = clustered(2000, 32, seed=8)
    plain = faiss.IndexFlatIP(32)
    plain.add(bank)
    faiss.write_index(plain, str(tmp_path / "knn.index"))
    cache = VisualCache.from_faiss_index(tmp_path / "knn.index")
    assert cache.features is None and len(cache) == 2000 and cache.plan.kind == "external"
    np.testing.assert_allclose(cache.enhance(queries), reference_enhance(queries, bank, 10, 20.0, 0.5), atol=2e-6)
    # Converting it into our format keeps the results.
    cache.save(tmp_path / "converted")
    conv = VisualCache.load(tmp_path / "converted")
    np.testing.assert_allclose(conv.enhance(queries), cache.enhance(queries), atol=1e-6)


def test_reads_l2_and_ivf_faiss_indexes(tmp_path, queries):
    bank = clustered(2000, 32, seed=9)
    l2 = faiss.IndexFlatL2(32)
    l2.add(bank)
    faiss.write_index(l2, str(tmp_path / "l2.index"))
    got = VisualCache.from_faiss_index(tmp_path / "l2.index").enhance(queries)
    np.testing.assert_allclose(got, reference_enhance(queries, bank, 10, 20.0, 0.5), atol=2e-6)

    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(bank)
    ivf.add(bank)
    ivf.nprobe = 16  # all lists: exact
    faiss.write_index(ivf, str(tmp_path / "ivf.index"))
    cache = VisualCache.from_faiss_index(tmp_path / "ivf.index")
    cache.index.nprobe = 16
    np.testing.assert_allclose(cache.enhance(queries), reference_enhance(queries, bank, 10, 20.0, 0.5), atol=2e-6)


def test_corrupt_or_missing_faiss_index(tmp_path):
    (tmp_path / "bad.index").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptCacheError, match="bad.index"):
        VisualCache.from_faiss_index(tmp_path / "bad.index")
    with pytest.raises(CorruptCacheError, match="missing"):
        VisualCache.from_faiss_index(tmp_path / "none.index")


# ------------------------------------------------------------------------------------------ errors
def test_typed_errors(flat_cache, queries):
    with pytest.raises(CacheDimensionError, match="dimension 16"):
        flat_cache.enhance(np.zeros((2, 16), np.float32))
    with pytest.raises(CacheDimensionError):
        flat_cache.search(np.zeros((2, 3, 32), np.float32))
    with pytest.raises(EmptyCacheError):
        VisualCache.from_features(np.zeros((0, 32), np.float32))
    with pytest.raises(CacheDimensionError):
        VisualCache.from_features(np.zeros(32, np.float32))
    with pytest.raises(CacheError, match="ids"):
        VisualCache.from_features(clustered(10, 8), ids=["a"])
    with pytest.raises(CacheError, match="alpha"):
        flat_cache.enhance(queries, alpha=1.5)
    with pytest.raises(CacheError, match="k must"):
        flat_cache.enhance(queries, k=0)
    assert issubclass(CacheDimensionError, IbllmError)


def test_non_finite_or_non_numeric_input_is_a_typed_error(flat_cache, queries):
    """NaN queries used to come back as NaN rows (faiss finds no neighbour); NaN/inf features made
    faiss' k-means abort with a bare RuntimeError; non-numeric knobs raised bare ValueErrors."""
    bad = queries.copy()
    bad[1, 3] = np.nan
    with pytest.raises(CacheError, match=r"NaN or infinite.*\[1\]"):
        flat_cache.enhance(bad)
    with pytest.raises(CacheError, match="NaN or infinite"):
        flat_cache.search(np.full(32, np.inf, np.float32))
    with pytest.raises(CacheError, match="numeric"):
        flat_cache.enhance(np.array([["a"] * 32]))
    with pytest.raises(CacheError, match="must be numbers"):
        flat_cache.enhance(queries, k="ten")
    with pytest.raises(CacheError, match="must be numbers"):
        flat_cache.enhance(queries, alpha=None)
    with pytest.raises(CacheError, match="must be numbers"):
        flat_cache.search(queries, k="many")
    with pytest.raises(CacheError, match="k must be >= 1"):
        flat_cache.search(queries, k=0)
    feats = clustered(200, 16)
    feats[150, 2] = np.nan
    with pytest.raises(CacheError, match=r"rows \[150\]"):
        VisualCache.from_features(feats)  # flat
    with pytest.raises(CacheError, match="NaN or infinite"):
        VisualCache.from_features(feats, index="ivf_pq")
    with pytest.raises(CacheError, match="numeric"):
        VisualCache.from_features([["a", "b"], ["c", "d"]])
    huge = clustered(200, 16) * 1e5  # beyond float16's range: inf once stored
    with pytest.raises(CacheError, match="65504"):
        VisualCache.from_features(huge)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"count": "300"}, "'count' must be a positive integer"),
        ({"dim": -32}, "'dim' must be a positive integer"),
        ({"version": "1"}, "non-integer version"),
        ({"index": []}, "'index' must describe"),
        ({"index": {"kind": "hnsw"}}, "'index' must describe"),
        ({"index": {"kind": "flat"}}, "bad index plan"),
    ],
)
def test_damaged_meta_json_is_a_typed_error(tmp_path, edit, match):
    """Hand-edited/damaged meta.json used to escape as bare ValueError/TypeError (int('abc'),
    IndexPlan(**{}), np.memmap with a negative shape)."""
    VisualCache.from_features(clustered(300, 32)).save(tmp_path / "c")
    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert VisualCache.load(tmp_path / "c").plan.kind == meta["index"]["kind"] == "flat"
    meta.update(edit)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match=match):
        VisualCache.load(tmp_path / "c")


def test_searches_beyond_the_gpu_k_limit_use_the_cpu_index(monkeypatch):
    """faiss-gpu returns at most 2048 results per query; an IVF query needs refine·k candidates
    (32·100 = 3200 at the reference UI's largest k), which the GPU clone rejects with a bare
    RuntimeError. Such searches now run on the CPU index."""
    from ibllm_agent.cache import visual_cache as vc

    class GpuIndexFake:  # stands in for a faiss-gpu clone: same results, enforces the GPU limit
        def __init__(self, cpu):
            self.cpu, self.calls = cpu, []

        def search(self, q, k):
            self.calls.append(k)
            if k > vc.GPU_MAX_K:
                raise RuntimeError("GPU index only supports k <= 2048")
            return self.cpu.search(q, k)

    fakes = []
    monkeypatch.setattr(vc, "to_search_device", lambda index: fakes.append(GpuIndexFake(index)) or fakes[-1])
    monkeypatch.setattr(vc, "set_nprobe", lambda index, nprobe: None)  # the CPU index keeps its build nprobe
    bank = clustered(5000, 16)
    cache = VisualCache.from_features(bank, index="ivf_pq", recall=None)  # no planning: only these searches
    q = bank[:2]
    small = cache.enhance(q, k=10)
    assert fakes and fakes[0].calls == [10 * cache.plan.refine]  # served by the "GPU"
    big = cache.enhance(q, k=100)  # 3200 candidates: the CPU index answers
    assert fakes[0].calls == [10 * cache.plan.refine]
    want = reference_enhance(q, bank, 100, 20.0, 0.5)
    np.testing.assert_allclose(big, want, atol=1e-3)
    assert small.shape == big.shape == (2, 16)


def test_coarse_centroids_use_faiss_two_level_clustering_with_a_fallback(monkeypatch):
    import faiss.contrib.clustering as contrib

    from ibllm_agent.cache.index import train_coarse_centroids

    data = clustered(128 * 40, 16, seed=2, clusters=50)
    calls = []
    real = contrib.two_level_clustering

    def spy(*args, **kwargs):
        calls.append((args[1], args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(contrib, "two_level_clustering", spy)
    cents = train_coarse_centroids(data, 128)
    assert calls == [(11, 128)]  # round(sqrt(128)) coarse clusters, split into 128
    assert cents.shape == (128, 16) and np.allclose(np.linalg.norm(cents, axis=1), 1, atol=1e-5)
    assert (data @ cents.T).max(axis=0).min() > 0.5  # every centroid sits near some data

    def too_small(*args, **kwargs):  # faiss refuses more centroids than points in a coarse cluster
        raise RuntimeError("'clus.k > 0' failed")

    monkeypatch.setattr(contrib, "two_level_clustering", too_small)
    fallback = train_coarse_centroids(data, 128)
    assert fallback.shape == (128, 16) and np.allclose(np.linalg.norm(fallback, axis=1), 1, atol=1e-5)
