"""save_pretrained / from_pretrained: round trip, file split, typed errors for bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ibllm_agent.errors import CheckpointError, ConfigError, TokenizerError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.checkpoint import is_adapter_key, load_encoder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = ImageBindLLM.from_preset("tiny", seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".gate", ".bias")) or ".lora_b." in name:
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(out)
    return model, out


def test_round_trip_gives_identical_outputs(saved):
    model, out = saved
    loaded = ImageBindLLM.from_pretrained(out, device="cpu", dtype="float32")
    assert loaded.config.to_dict() == model.config.to_dict()
    ids = torch.tensor([model.tokenizer.encode("What does the audio contain?")])
    visual = torch.randn(1, 1, model.config.hidden_size)
    with torch.no_grad():
        a, _ = model(ids, visual=visual)
        b, _ = loaded(ids, visual=visual)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The encoder of a tiny preset travels in encoder.safetensors.
    x = torch.randn(1, 3, 224, 224)
    own = load_encoder(model.config, model.checkpoint_dir, model.encoder_seed)
    saved_enc = load_encoder(loaded.config, loaded.checkpoint_dir, loaded.encoder_seed)
    with torch.no_grad():
        torch.testing.assert_close(own.encode("image", x), saved_enc.encode("image", x))
    assert loaded.tokenizer.encode("hello") == model.tokenizer.encode("hello")
    assert loaded.num_trainable() == 0 and not loaded.training


def test_files_split_base_and_adapter(saved):
    model, out = saved
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter.safetensors", "base.safetensors", "config.json", "encoder.safetensors", "tokenizer.model"]
    adapter, base = load_file(out / "adapter.safetensors"), load_file(out / "base.safetensors")
    assert all(is_adapter_key(k) for k in adapter) and not any(is_adapter_key(k) for k in base)
    assert "lm.model.layers.0.self_attn.gate" in adapter and "prefix_query.weight" in adapter
    assert "lm.model.layers.0.self_attn.q_proj.lora_a.weight" in adapter
    assert "lm.model.layers.0.self_attn.q_proj.weight" in base and "lm.lm_head.weight" in base
    assert set(adapter) | set(base) == set(model.state_dict())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lm"]["hidden_size"] == 64 and cfg["prompt_template"] == "alpaca"


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_and_mis_shaped_keys_are_named(saved, tmp_path):
    _, out = saved
    bad = _copy(out, tmp_path / "bad")
    adapter = load_file(bad / "adapter.safetensors")
    del adapter["lm.model.layers.1.self_attn.gate"]
    adapter["prefix_query.weight"] = torch.zeros(3, 64)
    adapter["lm.model.layers.0.self_attn.k_proj.bias"] = torch.zeros(32)
    save_file(adapter, bad / "adapter.safetensors")
    with pytest.raises(CheckpointError) as err:
        ImageBindLLM.from_pretrained(bad, device="cpu")
    msg = str(err.value)
    assert "lm.model.layers.1.self_attn.gate" in msg
    assert "lm.model.layers.0.self_attn.k_proj.bias" in msg
    assert "prefix_query.weight" in msg and "(3, 64)" in msg


def test_truncated_file_and_missing_folder(saved, tmp_path):
    _, out = saved
    bad = _copy(out, tmp_path / "trunc")
    data = (bad / "base.safetensors").read_bytes()
    (bad / "base.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="base.safetensors"):
        ImageBindLLM.from_pretrained(bad, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        ImageBindLLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        ImageBindLLM.from_pretrained(tmp_path / "empty")


def test_wrong_tokenizer_size_and_bad_config(saved, tmp_path):
    from ibllm_agent.model.tokenizer import tiny_tokenizer

    _, out = saved
    bad = _copy(out, tmp_path / "tok")
    (bad / "tokenizer.model").write_bytes(tiny_tokenizer(1024).path.read_bytes())
    with pytest.raises(TokenizerError, match="1024 pieces"):
        ImageBindLLM.from_pretrained(bad, device="cpu")
    cfg = json.loads((out / "config.json").read_text())
    cfg["phase"] = "warmup"
    bad2 = _copy(out, tmp_path / "cfg")
    (bad2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="phase"):
        ImageBindLLM.from_pretrained(bad2, device="cpu")


def test_meta_model_cannot_be_saved(tmp_path):
    model = ImageBindLLM.from_preset("tiny", device="meta")
    with pytest.raises(CheckpointError, match="meta"):
        model.save_pretrained(tmp_path / "x")
