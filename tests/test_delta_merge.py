"""Open-Chinese-LLaMA delta merge (reference tools/get_chinese_llama.py) on tiny Meta-layout tensors."""

from __future__ import annotations

import json

import pytest
import torch

from ibllm_agent.errors import CheckpointError
from ibllm_agent.model.delta import merge_delta


def _meta_layout(seed: int, dim: int = 8, vocab: int = 11, hidden: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).half()

    state = {"tok_embeddings.weight": r(vocab, dim), "norm.weight": r(dim), "output.weight": r(vocab, dim),
             "rope.freqs": torch.arange(dim // 2, dtype=torch.float32)}
    for i in range(2):
        for w in ("wq", "wk", "wv", "wo"):
            state[f"layers.{i}.attention.{w}.weight"] = r(dim, dim)
        state[f"layers.{i}.feed_forward.w1.weight"] = r(hidden, dim)
        state[f"layers.{i}.feed_forward.w2.weight"] = r(dim, hidden)
        state[f"layers.{i}.feed_forward.w3.weight"] = r(hidden, dim)
        state[f"layers.{i}.attention_norm.weight"] = r(dim)
        state[f"layers.{i}.ffn_norm.weight"] = r(dim)
    return state


@pytest.fixture
def folders(tmp_path):
    base, delta = tmp_path / "7B", tmp_path / "7B_chinese_delta"
    base.mkdir()
    delta.mkdir()
    torch.save(_meta_layout(0), base / "consolidated.00.pth")
    d = _meta_layout(1)
    d.pop("rope.freqs")
    torch.save(d, delta / "consolidated.00.pth")
    (base / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 2, "vocab_size": -1}))
    (delta / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 2, "vocab_size": 11}))
    return base, delta, tmp_path / "7B_chinese"


def test_merge_is_fp16_of_fp32_sum_and_skips_rope(folders):
    base, delta, out = folders
    dest = merge_delta(base, delta, out)
    merged = torch.load(dest, weights_only=True)
    b = torch.load(base / "consolidated.00.pth", weights_only=True)
    d = torch.load(delta / "consolidated.00.pth", weights_only=True)
    assert set(merged) == set(b) - {"rope.freqs"}
    for k, v in merged.items():
        assert v.dtype == torch.float16 and v.shape == b[k].shape
        assert torch.equal(v, (b[k].float() + d[k].float()).half()), k
    assert json.loads((out / "params.json").read_text())["vocab_size"] == 11  # the delta's params.json
    assert not list(out.glob("*.part"))


def test_shape_mismatch_and_missing_key_are_errors_and_write_nothing(folders):
    base, delta, out = folders
    d = torch.load(delta / "consolidated.00.pth", weights_only=True)
    d["norm.weight"] = torch.zeros(9, dtype=torch.float16)
    torch.save(d, delta / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="norm.weight.*differ in shape"):
        merge_delta(base, delta, out)
    del d["norm.weight"]
    torch.save(d, delta / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="lacks 1 tensor"):
        merge_delta(base, delta, out)
    assert not out.exists()


def test_truncated_delta_is_a_checkpoint_error(folders):
    base, delta, out = folders
    data = (delta / "consolidated.00.pth").read_bytes()
    (delta / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        merge_delta(base, delta, out)
