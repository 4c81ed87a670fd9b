"""``--model`` names: ``demo`` is the shipped checkpoint, ``official`` the converted 7B in the weights
dir, ``auto`` (the default) the official one when converted, else the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ibllm_agent import shipped
from ibllm_agent.cli.run import resolve_model_spec
from ibllm_agent.errors import CheckpointError, ConfigError

FILES = ("config.json", "base.safetensors", "adapter.safetensors", "encoder.safetensors", "tokenizer.model")


@pytest.fixture
def fake_demo(tmp_path, monkeypatch):
    folder = tmp_path / "shipped_demo"
    folder.mkdir()
    for f in FILES:
        (folder / f).write_text("x")
    monkeypatch.setattr(shipped, "DEMO_DIR", folder)
    return folder


def test_demo_is_the_shipped_folder(fake_demo):
    assert resolve_model_spec("demo") == str(fake_demo)


def test_missing_demo_file_is_named(fake_demo):
    (fake_demo / "base.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"demo model is not installed: .*base\.safetensors is missing.*"
                                              r"python -m ibllm_agent\.training\.demo"):
        resolve_model_spec("demo")


def test_auto_prefers_the_converted_official_model(fake_demo, monkeypatch, tmp_path):
    weights = tmp_path / "weights"
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(weights))
    assert resolve_model_spec("auto") == str(fake_demo)
    with pytest.raises(ConfigError, match="official model is not installed.*convert --from-registry"):
        resolve_model_spec("official")
    (weights / "official").mkdir(parents=True)
    (weights / "official" / "config.json").write_text("{}")
    assert resolve_model_spec("auto") == str(weights / "official")
    assert resolve_model_spec("official") == str(weights / "official")
    assert resolve_model_spec("demo") == str(fake_demo)


def test_other_specs_pass_through():
    for spec in ("tiny", "scripted:x.json", str(Path("some/dir"))):
        assert resolve_model_spec(spec) == spec
