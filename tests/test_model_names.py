"""``--model`` names: ``demo`` is the shipped checkpoint, ``official`` the converted 7B in the weights
dir, ``auto`` (the default) the official one when converted, else the demo model."""

from __future__ import annotations

import pytest

from ibllm_agent import loading, shipped
from ibllm_agent.errors import CheckpointError, ConfigError

FILES = ("config.json", "base.safetensors", "adapter.safetensors", "encoder.safetensors", "tokenizer.model")


@pytest.fixture
def fake_demo(tmp_path, monkeypatch):
    folder = tmp_path / "shipped_demo"
    folder.mkdir()
    for f in FILES:
        (folder / f).write_text("x")
    monkeypatch.setattr(shipped, "DEMO_DIR", folder)
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(tmp_path / "weights"))
    return folder


def test_demo_is_the_shipped_folder(fake_demo):
    assert loading._folder_of(loading._MODELS["demo"], "demo") == fake_demo
    loading.check_model_name("demo")


def test_missing_demo_file_is_named(fake_demo):
    (fake_demo / "base.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"demo model is not installed: .*base\.safetensors is missing.*"
                                              r"python -m ibllm_agent\.training\.demo"):
        loading.check_model_name("demo")


def test_auto_prefers_the_converted_official_model(fake_demo, tmp_path):
    assert loading._auto() == "demo"
    loading.check_model_name("auto")
    with pytest.raises(ConfigError, match="official model is not installed.*pull imagebind-llm-7b"):
        loading.check_model_name("official")
    official = tmp_path / "weights" / "official"
    official.mkdir(parents=True)
    (official / "config.json").write_text("{}")
    assert loading._auto() == "official"
    assert loading._folder_of(loading._MODELS["official"], "official") == official
    assert loading._name_of("auto")[0] == "official"
