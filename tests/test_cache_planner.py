"""Recall planner: measured plans reach the target on easy and hard data, persist, re-plan, escalate."""

from __future__ import annotations

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from ibllm_agent import VisualCache
from ibllm_agent.cache import planner, store
from ibllm_agent.cache.planner import RecallReport, exact_neighbours, holdout_rows
from ibllm_agent.errors import CacheError


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def mixture(n: int, d: int, noise: float, seed: int = 0, clusters: int = 200) -> np.ndarray:
    """Unit vectors around fixed centres (the centres depend only on d): noise 0.5 = tight clusters
    (easy), 3.0 = near-uniform, flat neighbourhoods (hard for 4-bit PQ). float16-exact values."""
    centres = unit(np.random.default_rng(1000 + d).standard_normal((clusters, d)))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return unit(x).astype(np.float16).astype(np.float32)


def recall_on_new_queries(cache: VisualCache, bank: np.ndarray, q: np.ndarray, k: int = 10) -> float:
    rows = cache.search(q, k)[1]
    truth = np.argsort(-(q @ bank.T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rows, truth)]))


N, D = 24_000, 32  # above FLAT_MAX_N: the sizing rules pick ivf_pq


@pytest.fixture(scope="module")
def easy():
    bank = mixture(N, D, 0.5, seed=1)
    return bank, VisualCache.from_features(bank)


@pytest.fixture(scope="module")
def hard():
    bank = mixture(N, D, 3.0, seed=2)
    return bank, VisualCache.from_features(bank)


@pytest.mark.parametrize("which", ["easy", "hard"])
def test_planner_reaches_target_on_two_difficulties(request, which):
    bank, cache = request.getfixturevalue(which)
    rep = cache.recall_report
    assert cache.plan.kind == "ivf_pq" and rep is not None
    assert rep.met and rep.target == 0.95 and rep.recall >= 0.95 and rep.queries == 256 and rep.k == 10
    assert rep.p50_ms is not None and rep.p99_ms >= rep.p50_ms
    # The plan holds on queries the planner never saw (fresh draws of the same distribution).
    fresh = mixture(200, D, 0.5 if which == "easy" else 3.0, seed=99)
    assert recall_on_new_queries(cache, bank, fresh) >= 0.94
    # Budget 4 GiB easily holds index + 24 000 x 32 float16 rows: the refinement store is resident.
    assert cache.plan.resident


def test_hard_data_gets_a_costlier_plan_than_easy(easy, hard):
    e, h = easy[1].plan, hard[1].plan
    assert h.nprobe * h.refine > e.nprobe * e.refine
    # The fixed sizing rules (nprobe = min(nlist, 32), refine 32) miss the target on hard data.
    rules = VisualCache.from_features(hard[0], recall=None)
    assert rules.recall_report is None
    fresh = mixture(200, D, 3.0, seed=98)
    assert recall_on_new_queries(rules, hard[0], fresh) < 0.9 < 0.94 <= recall_on_new_queries(hard[1], hard[0], fresh)


def test_held_out_truth_excludes_the_query_row():
    bank = mixture(500, 16, 1.0)
    rows = holdout_rows(500, 20)
    truth = exact_neighbours(bank, rows, 5, chunk=128)  # several chunks
    scores = bank[rows] @ bank.T
    scores[np.arange(20), rows] = -np.inf
    np.testing.assert_array_equal(truth, np.argsort(-scores, axis=1, kind="stable")[:, :5])


def test_stored_plan_reloads_and_shows_in_info(tmp_path, easy):
    bank, cache = easy
    cache.save(tmp_path / "c")
    loaded = VisualCache.load(tmp_path / "c")
    assert loaded.plan == cache.plan and loaded.recall_report == cache.recall_report
    assert not store.is_mapped(loaded.features)  # resident: read into RAM
    assert faiss.extract_index_ivf(loaded.index).nprobe == cache.plan.nprobe
    info = loaded.info()
    assert info["recall"]["recall"] == cache.recall_report.recall and info["refine_store"] == "ram"
    q = bank[:5] + 0.01
    for a, b in zip(cache.search(q, 10), loaded.search(q, 10)):
        np.testing.assert_array_equal(a, b)


def test_replan_lower_target_and_small_budget_keeps_features_mapped(tmp_path, hard):
    bank, cache = hard
    cache.save(tmp_path / "c")
    loaded = VisualCache.load(tmp_path / "c")
    budget = cache.plan.ram_bytes() + 1000  # room for the index only
    low = loaded.plan_for_recall(0.6, memory_budget=budget, queries=128)
    assert low.met and low.target == 0.6 and low.queries == 128
    assert loaded.plan.nprobe * loaded.plan.refine <= cache.plan.nprobe * cache.plan.refine
    assert not loaded.plan.resident
    loaded.save_plan()
    again = VisualCache.load(tmp_path / "c")
    assert again.plan == loaded.plan and again.recall_report == low and store.is_mapped(again.features)
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["memory_budget"] == budget
    # Tuning by hand drops the measurement that no longer describes the plan.
    again.tune(refine=2)
    assert again.recall_report is None and again.info()["recall"] is None


def test_escalates_to_a_larger_index_when_pq_cannot_reach_the_target(monkeypatch):
    bank = mixture(N, D, 3.0, seed=3)
    monkeypatch.setattr(planner, "REFINES", (1,))  # no re-scoring headroom: PQ and SQ8 rankings alone
    cache = VisualCache.from_features(bank, recall=0.999)
    rep = cache.recall_report
    kinds = {t["kind"] for t in rep.tried}
    assert "ivf_pq" in kinds and rep.met
    assert cache.plan.kind in ("ivf_sq8", "flat")
    if cache.plan.kind == "flat":
        assert rep.method == "exact" and rep.recall == 1.0
    # A forced kind is never swapped, and a missed target is reported, not hidden.
    forced = VisualCache.from_features(bank, index="ivf_pq", recall=0.999)
    assert forced.plan.kind == "ivf_pq" and not forced.recall_report.met
    assert "NOT met" in forced.recall_report.summary()


def test_flat_is_exact_and_bad_targets_are_typed_errors(easy):
    flat = VisualCache.from_features(easy[0][:1000])
    assert flat.recall_report == RecallReport(0.95, 10, 1.0, True, 0, method="exact")
    for bad in (0, 1.5, -0.1, "x"):
        with pytest.raises(CacheError, match="recall target"):
            VisualCache.from_features(easy[0][:1000], recall=bad)
    ext = VisualCache(flat.index, flat.plan.__class__("external", 1000, D), None)
    with pytest.raises(CacheError, match="only IVF"):
        ext.plan_for_recall(0.9)
