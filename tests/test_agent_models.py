"""ModelPool: lazy loading on a chosen device, memory budget, LRU unloading (fake loaders)."""

from __future__ import annotations

import threading

import pytest

from ibllm_agent.agent.models import ModelPool, measure_bytes, parse_size
from ibllm_agent.errors import ConfigError, ModelBudgetError, ToolRegistryError

MiB = 2**20


class FakeModel:
    def __init__(self, key, device, size):
        self.key, self.device, self.size_bytes = key, device, size


def loader(calls, key, size):
    def load(device):
        calls.append((key, device))
        return FakeModel(key, device, size)

    return load


def test_lazy_load_on_chosen_device_once():
    calls = []
    pool = ModelPool(device="cuda:1", budget="1GiB")
    pool.register("sam", loader(calls, "sam", 100 * MiB))
    pool.register("dino", loader(calls, "dino", 100 * MiB), device="cpu")
    assert calls == [] and pool.loaded() == []  # nothing at registration
    sam = pool.get("sam")
    assert sam.device == "cuda:1" and pool.get("sam") is sam
    assert pool.get("dino").device == "cpu"
    assert calls == [("sam", "cuda:1"), ("dino", "cpu")]


def test_budget_unloads_least_recently_used():
    calls, unloaded = [], []
    pool = ModelPool(device="cpu", budget=300 * MiB)
    for key in ("a", "b", "c", "d"):
        # sizes reported by the loaded objects (not declared): measured after loading
        pool.register(key, loader(calls, key, 100 * MiB), unload=lambda m: unloaded.append(m.key))
    pool.get("a"), pool.get("b"), pool.get("c")
    pool.get("a")  # a becomes most recently used; b is now the oldest
    pool.get("d")
    assert pool.loaded() == ["c", "a", "d"] and unloaded == ["b"]
    assert pool.used_bytes() == 300 * MiB
    pool.get("b")  # reloads b, evicting c
    assert pool.loaded() == ["a", "d", "b"] and unloaded == ["b", "c"]
    assert [k for k, _ in calls].count("b") == 2


def test_declared_size_makes_room_before_loading():
    calls = []
    pool = ModelPool(device="cpu", budget=250 * MiB)
    pool.register("small", loader(calls, "small", 100 * MiB), size_bytes="100MiB")
    pool.register("big", loader(calls, "big", 200 * MiB), size_bytes=200 * MiB)
    pool.get("small")

    seen_loaded_at_load_time = []
    orig = pool._specs["big"].load
    pool._specs["big"].load = lambda d: (seen_loaded_at_load_time.append(pool.loaded()), orig(d))[1]
    pool.get("big")
    assert seen_loaded_at_load_time == [[]]  # "small" was unloaded *before* "big" loaded


def test_model_larger_than_budget_is_typed_error():
    pool = ModelPool(device="cpu", budget="100MiB")
    pool.register("huge", loader([], "huge", 0), size_bytes="1GiB")
    with pytest.raises(ModelBudgetError, match="'huge' needs 1.0 GiB but the pool budget on cpu is 100.0 MiB"):
        pool.get("huge")
    pool.register("liar", loader([], "liar", 500 * MiB))  # size only known after loading
    with pytest.raises(ModelBudgetError):
        pool.get("liar")
    assert pool.loaded() == []


def test_pinned_model_is_not_unloaded_under_a_running_tool():
    pool = ModelPool(device="cpu", budget=150 * MiB)
    pool.register("a", loader([], "a", 100 * MiB), size_bytes=100 * MiB)
    pool.register("b", loader([], "b", 100 * MiB), size_bytes=100 * MiB)
    with pool.use("a"):
        with pytest.raises(ModelBudgetError, match="in use by running tools: a"):
            pool.get("b")
        with pytest.raises(ModelBudgetError):
            pool.unload("a")
    pool.get("b")  # after the tool finished, a can go
    assert pool.loaded() == ["b"]


def test_unknown_and_duplicate_models():
    pool = ModelPool(device="cpu")
    with pytest.raises(ToolRegistryError, match="no model 'x' registered"):
        pool.get("x")
    pool.register("x", loader([], "x", 1))
    with pytest.raises(ToolRegistryError, match="already registered"):
        pool.register("x", loader([], "x", 1))


def test_concurrent_get_loads_once():
    calls = []
    pool = ModelPool(device="cpu", budget=None)
    pool.register("m", loader(calls, "m", 10))
    threads = [threading.Thread(target=pool.get, args=("m",)) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1


def test_parse_size_and_measure():
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1.5 MB") == 1_500_000 and parse_size(7) == 7
    assert parse_size(None) is None
    with pytest.raises(ConfigError):
        parse_size("lots")
    import torch

    lin = torch.nn.Linear(10, 10)  # 110 float32 params
    assert measure_bytes(lin) == 110 * 4
    assert measure_bytes(torch.zeros(3, dtype=torch.float16)) == 6
