"""``ibllm_agent.load_model``: names, the device/dtype Settings rules reaching LLM, encoder and cache,
clear errors before any weights load, the shared pool (per-key locks, release)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import ibllm_agent
from ibllm_agent import loading
from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.errors import ConfigError
from ibllm_agent.loading import load_model, load_shared
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.multimodal import MultimodalLLM, ReleasedModelError
from ibllm_agent.types import CacheSettings, Media, TextGenerator

IMG = torch.zeros(3, 224, 224)
IMG[1, 40:120, 60:140] = 1.5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from ibllm_agent.cache import VisualCache

    path = tmp_path_factory.mktemp("vc") / "cache"
    VisualCache.from_features(np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)).save(path)
    return path


def _placement(model: MultimodalLLM) -> set[tuple[str, torch.dtype]]:
    """(device type, dtype) of every floating tensor of the LLM and of the encoder."""
    tensors = [*model.llm.parameters(), *model.media.encoder.parameters()]
    return {(t.device.type, t.dtype) for t in tensors if t.is_floating_point()}


@pytest.mark.parametrize(
    "dtype,expected",
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("float16", torch.float16),
     ("auto", torch.float32), (torch.bfloat16, torch.bfloat16)],
)
def test_dtype_spellings_reach_llm_and_encoder(dtype, expected):
    model = load_model("tiny", device="cpu", dtype=dtype)
    assert _placement(model) == {("cpu", expected)}
    assert model.llm.dtype == model.media.dtype == model.dtype == expected
    assert model.media.device == model.llm.device == torch.device("cpu")


def test_bf16_model_with_cache_generates_and_cache_output_follows_the_stage(cache_dir):
    model = load_model("tiny", device="cpu", dtype="bf16", cache_dir=cache_dir)
    assert isinstance(model, TextGenerator) and model.media.cache is not None
    feats = model.encode([Media("image", IMG)])
    plain = model.encode([Media("image", IMG)], CacheSettings(enabled=False))
    assert feats.features.dtype == torch.float32 and feats.features.device == model.media.device
    assert not torch.allclose(feats.features, plain.features)  # the cache took part
    out = model.generate("What is this?", [Media("image", IMG)], temperature=0, max_new_tokens=3)
    assert out.completion_tokens > 0 and out.extras["visual"]


def test_env_and_config_file_rules(monkeypatch, tmp_path):
    import os

    cfg = os.environ["IBLLM_CONFIG_FILE"]  # the isolated test config file (conftest)
    with open(cfg, "w") as f:
        f.write('dtype = "bf16"\ndevice = "cpu"\n')
    assert _placement(load_model("tiny")) == {("cpu", torch.bfloat16)}  # file > default
    monkeypatch.setenv("IBLLM_DTYPE", "fp16")
    assert _placement(load_model("tiny")) == {("cpu", torch.float16)}  # env > file
    assert _placement(load_model("tiny", dtype="fp32")) == {("cpu", torch.float32)}  # argument > env
    monkeypatch.setenv("IBLLM_DEVICE", "cpu")
    from ibllm_agent.config import get_settings

    s = get_settings(dtype="bf16")
    assert _placement(load_model("tiny", settings=s)) == {("cpu", torch.bfloat16)}  # given settings
    monkeypatch.setenv("IBLLM_DTYPE", "int8")
    with pytest.raises(ConfigError, match="int8"):
        load_model("tiny")


@pytest.fixture
def no_weights_load(monkeypatch):
    """Fail the test if anything starts reading or building weights."""

    def boom(*args, **kwargs):
        raise AssertionError("weights were loaded before the device was checked")

    monkeypatch.setattr(ImageBindLLM, "from_preset", classmethod(boom))
    monkeypatch.setattr(ImageBindLLM, "from_pretrained", classmethod(boom))
    monkeypatch.setattr("ibllm_agent.model.checkpoint.load_encoder", boom)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error_before_loading(no_weights_load, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model("tiny", device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model(tmp_path, device="cuda:1")  # a folder: checked before the folder is even read
    monkeypatch.setenv("IBLLM_DEVICE", "cuda")
    with pytest.raises(ConfigError, match="'cuda' requested but CUDA is not available"):
        load_model("tiny")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ChatImageBindLLM(preset="tiny")  # the chat model loads through the same rules
    with pytest.raises(ConfigError, match="npu"):
        load_model("tiny", device="npu")


def test_chat_model_takes_settings_spellings():
    chat = ChatImageBindLLM(preset="tiny", device="cpu", dtype="bf16", max_new_tokens=3, temperature=0)
    assert isinstance(chat.model, MultimodalLLM) and _placement(chat.model) == {("cpu", torch.bfloat16)}
    assert isinstance(chat.invoke("hi").content, str)


def test_names_folders_and_official(tmp_path, monkeypatch):
    assert {"tiny", "demo", "official", "auto"} <= set(loading.available_models())
    assert ibllm_agent.load_model is load_model
    with pytest.raises(ConfigError, match="the official model is not installed: expected a model folder at"):
        load_model("official", device="cpu")
    with pytest.raises(ConfigError, match="neither a known name"):
        load_model(str(tmp_path / "nope"), device="cpu")
    original = MultimodalLLM.from_llm(ImageBindLLM.from_preset("tiny", seed=4))
    weights = tmp_path / "weights"
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(weights))
    original.save_pretrained(weights / "official")
    demo = load_model("official", device="cpu", dtype="fp32")
    assert demo.name == "official" and demo.llm.checkpoint_dir == weights / "official"
    assert load_model("auto", device="cpu", dtype="fp32").llm.checkpoint_dir == weights / "official"
    prompt, media = "Describe it.", [Media("image", IMG)]
    want = original.generate(prompt, media, temperature=0, max_new_tokens=5).extras["token_ids"]
    assert demo.generate(prompt, media, temperature=0, max_new_tokens=5).extras["token_ids"] == want
    assert load_model(weights / "official", device="cpu").llm.checkpoint_dir == weights / "official"  # a Path: a folder
    with pytest.raises(ConfigError, match="only apply to presets"):
        load_model(weights / "official", device="cpu", overrides={"context_length": 64})
    assert load_model("tiny", device="cpu", overrides={"context_length": 64}).context_length == 64


def test_shared_pool_and_release():
    a = load_shared("tiny", "cpu", "fp32")
    assert load_shared("tiny", "cpu", "float32") is a  # the same key, however spelt
    b = load_shared("tiny", "cpu", "bf16")
    assert b is not a
    chat = ChatImageBindLLM(preset="tiny", device="cpu", dtype="float32")
    assert chat.model is a
    view = a.with_cache(None)  # another media stage over the same weights
    view.release()  # releases the weights of both, and the pool forgets them
    assert a.released
    assert a.released and all(p.is_meta for p in a.llm.parameters())  # the memory is returned
    assert all(p.is_meta for p in a.media.encoder.parameters())
    with pytest.raises(ReleasedModelError, match="released"):
        a.generate("hi")
    with pytest.raises(ReleasedModelError):
        chat.invoke("hi")  # a chat model holding it gets a typed error, not a crash
    fresh = load_shared("tiny", "cpu", "fp32")
    assert fresh is not a and not fresh.released and a not in loading.shared_models()
    assert b in loading.shared_models()
    a.release()  # twice is harmless
    b.release()
    fresh.release()


def test_no_global_lock_while_a_model_loads(monkeypatch):
    """A slow load of one key does not hold up another key (nor the pool)."""
    started, finish = threading.Event(), threading.Event()
    real = loading.load_model

    def slow_load(name, *args, **kwargs):
        if kwargs.get("overrides", {}).get("context_length") == 128:
            started.set()
            assert finish.wait(30)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model", slow_load)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault(
        "slow", load_shared("tiny", "cpu", "fp32", overrides={"context_length": 128})))
    t.start()
    assert started.wait(30)
    other = load_shared("tiny", "cpu", "fp32", overrides={"context_length": 96})  # runs while the other loads
    assert other.context_length == 96 and t.is_alive()
    finish.set()
    t.join(30)
    assert results["slow"].context_length == 128
    other.release()
    results["slow"].release()


def test_agent_accepts_model_names_and_a_bare_llm(tmp_path):
    from ibllm_agent.agent.chat_loading import load_chat_model

    chat = load_chat_model("tiny", device="cpu", dtype="bf16")
    assert chat.model.llm.dtype == torch.bfloat16
    bare = ImageBindLLM.from_preset("tiny", seed=2)
    wrapped = load_chat_model(bare)
    assert isinstance(wrapped.model, MultimodalLLM) and wrapped.model.llm is bare
    with pytest.raises(ConfigError, match=r"\['tiny', 'demo', 'official', 'auto'\]"):
        load_chat_model(str(tmp_path / "missing"))
