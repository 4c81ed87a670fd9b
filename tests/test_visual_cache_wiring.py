"""A visual cache configured by setting, flag or argument reaches the model's media encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ibllm_agent.cache import VisualCache
from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.errors import ConfigError
from ibllm_agent.testing import ScriptedGenerator
from ibllm_agent.types import CacheSettings, Media


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # The tiny preset's ImageBind embeds into 64 dimensions.
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((300, 64)).astype(np.float32)
    path = tmp_path_factory.mktemp("vc") / "cache"
    VisualCache.from_features(feats).save(path)
    return path


def _image() -> torch.Tensor:
    img = torch.zeros(3, 224, 224)
    img[1, 50:150, 60:120] = 1.5
    return img


def test_chat_model_cache_dir_enhances_media_encoding(cache_dir):
    chat = ChatImageBindLLM(preset="tiny", cache_dir=str(cache_dir))
    model = chat.model
    assert isinstance(model.media.cache, VisualCache)
    media = [Media("image", _image())]
    plain = model.encode(media, CacheSettings(enabled=False)).features
    enhanced = model.encode(media, CacheSettings()).features
    expected = model.media.cache.enhance(plain, k=10, t=20.0, alpha=0.5)
    assert not torch.allclose(plain, enhanced)
    torch.testing.assert_close(enhanced, expected)
    # Models are shared between chat models; one built without a cache must not see this one's.
    assert ChatImageBindLLM(preset="tiny").model.media.cache is None


def test_cache_dir_needs_a_model_with_a_visual_cache(cache_dir):
    with pytest.raises(ConfigError, match="visual cache"):
        ChatImageBindLLM(model=ScriptedGenerator(["AI: hi"]), cache_dir=str(cache_dir))


def test_agent_takes_the_cache_from_the_setting(cache_dir, monkeypatch, tmp_path):
    from ibllm_agent.cli.run import make_agent

    monkeypatch.setenv("IBLLM_VISUAL_CACHE", str(cache_dir))
    agent = make_agent("tiny", "memory", tmp_path / "ws", [], True, 2, "cpu")
    with agent:
        assert isinstance(agent.chat_model.model.media.cache, VisualCache)
        assert agent.chat_model.model.media.cache.info()["count"] == 300


def test_run_cli_cache_flag_and_bad_cache(cache_dir, tmp_path, monkeypatch, capsys):
    from ibllm_agent.cli import _register_all, app

    _register_all()
    runner = CliRunner()
    args = ["run", "Describe it.", "--model", "tiny", "--no-tools", "--memory", "memory",
            "--workspace", str(tmp_path / "ws"), "--json"]
    ok = runner.invoke(app, [*args, "--cache", str(cache_dir)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["stop_reason"] == "answer"
    # Through the console-script entry point, which prints typed errors as one line and exits 2.
    from ibllm_agent.cli import main

    monkeypatch.setattr("sys.argv", ["ibllm-agent", *args, "--cache", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err
