"""Conversion official/Meta/HF <-> ours.

The parity test builds a tiny checkpoint in Meta naming (2 shards) plus a tiny official adapter with
non-zero gates, biases and LoRA, converts it, and compares our logits with a reference forward written
below directly from the equations (RMSNorm, Meta's interleaved complex RoPE, causal softmax attention,
the one-token adapter through wv and tanh gates before wo, LoRA, biases, SwiGLU). That reference shares
no code with ibllm_agent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from ibllm_agent.errors import CheckpointError, ConfigError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.convert import (
    convert_to_official,
    convert_to_ours,
    hf_to_meta_rows,
    manifest_keys,
    meta_to_hf_rows,
    official_key_to_ours,
    ours_base_to_meta,
    read_torch,
)
from ibllm_agent.model.tokenizer import tiny_tokenizer

DIM, LAYERS, HEADS, KV_HEADS, MULTIPLE_OF, VIS = 64, 2, 4, 2, 16, 24
HEAD_DIM = DIM // HEADS
FFN_DIM = MULTIPLE_OF * math.ceil(int(2 * 4 * DIM / 3) / MULTIPLE_OF)  # Meta's rule: 176
RANK = 4
EPS = 1e-6


def _rand(g, *shape, scale=0.1):
    return torch.randn(*shape, generator=g) * scale


def make_meta(g, vocab: int) -> dict[str, torch.Tensor]:
    kv = KV_HEADS * HEAD_DIM
    sd = {"tok_embeddings.weight": _rand(g, vocab, DIM, scale=1.0), "norm.weight": 1 + _rand(g, DIM),
          "output.weight": _rand(g, vocab, DIM), "rope.freqs": torch.zeros(HEAD_DIM // 2)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = _rand(g, DIM, DIM, scale=0.15)
        sd[p + "attention.wk.weight"] = _rand(g, kv, DIM, scale=0.15)
        sd[p + "attention.wv.weight"] = _rand(g, kv, DIM, scale=0.3)
        sd[p + "attention.wo.weight"] = _rand(g, DIM, DIM, scale=0.3)
        sd[p + "feed_forward.w1.weight"] = _rand(g, FFN_DIM, DIM, scale=0.2)
        sd[p + "feed_forward.w2.weight"] = _rand(g, DIM, FFN_DIM, scale=0.2)
        sd[p + "feed_forward.w3.weight"] = _rand(g, FFN_DIM, DIM, scale=0.2)
        sd[p + "attention_norm.weight"] = 1 + _rand(g, DIM)
        sd[p + "ffn_norm.weight"] = 1 + _rand(g, DIM)
    return sd


def make_official(g) -> dict[str, torch.Tensor]:
    kv = KV_HEADS * HEAD_DIM
    sd = {"image_bind_proj.weight": _rand(g, DIM, VIS, scale=0.3), "image_bind_proj.bias": _rand(g, DIM)}
    for k in (1, 2, 3):
        sd[f"image_bind_norm_{k}.weight"] = 1 + _rand(g, DIM)
        sd[f"image_bind_f1_{k}.weight"] = _rand(g, 4 * DIM, DIM)
        sd[f"image_bind_f2_{k}.weight"] = _rand(g, DIM, 4 * DIM)
        sd[f"image_bind_f3_{k}.weight"] = _rand(g, 4 * DIM, DIM)
    sd["prefix_query.weight"] = _rand(g, LAYERS, DIM, scale=1.0)
    outs = {"wq": DIM, "wk": kv, "wv": kv, "wo": DIM}
    for i in range(LAYERS):
        p = f"llama.layers.{i}."
        sd[p + "attention.gate"] = _rand(g, 1, HEADS, 1, 1, scale=1.0).half()  # fp16, like the release
        sd[p + "attention.wq.bias"] = _rand(g, DIM)
        sd[p + "attention.wo.bias"] = _rand(g, DIM)
        for w, out in outs.items():
            sd[p + f"attention.lora_{w}_l1.weight"] = _rand(g, RANK, DIM, scale=0.3)
            sd[p + f"attention.lora_{w}_l2.weight"] = _rand(g, out, RANK, scale=0.3)
        sd[p + "feed_forward.w1.bias"] = _rand(g, FFN_DIM)
        sd[p + "feed_forward.w2.bias"] = _rand(g, DIM)
        sd[p + "feed_forward.w3.bias"] = _rand(g, FFN_DIM)
        for w, (i_dim, o_dim) in {"w1": (DIM, FFN_DIM), "w2": (FFN_DIM, DIM), "w3": (DIM, FFN_DIM)}.items():
            sd[p + f"feed_forward.lora_{w}_l1.weight"] = _rand(g, RANK, i_dim, scale=0.3)
            sd[p + f"feed_forward.lora_{w}_l2.weight"] = _rand(g, o_dim, RANK, scale=0.3)
        sd[p + "attention_norm.weight"] = 1 + _rand(g, DIM)
        sd[p + "ffn_norm.weight"] = 1 + _rand(g, DIM)
    sd["llama.norm.weight"] = 1 + _rand(g, DIM)
    return sd


def write_meta_folder(root, meta: dict, tokenizer_path, shards: int = 2):
    """Meta layout: <root>/7B/{params.json, consolidated.0k.pth} and <root>/tokenizer.model."""
    folder = root / "7B"
    folder.mkdir(parents=True)
    params = {"dim": DIM, "multiple_of": MULTIPLE_OF, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
              "n_layers": LAYERS, "norm_eps": EPS, "vocab_size": -1}
    (folder / "params.json").write_text(json.dumps(params))
    split = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
    for s in range(shards):
        part = {}
        for k, v in meta.items():
            leaf = k.split(".")[-2] if k.endswith(".weight") else k
            if leaf in split:
                part[k] = v.chunk(shards, dim=split[leaf])[s].clone()
            else:
                part[k] = v.clone()
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    (root / "tokenizer.model").write_bytes(tokenizer_path.read_bytes())
    return folder


# ---------------------------------------------------------------------- the independent reference


def ref_rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def ref_rope(x, positions):
    """Meta: dims (2j, 2j+1) are one complex number, rotated by pos·θ_j, θ_j = 10000^(-2j/D)."""
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions[:, None].double() * theta[None, :]  # [L, D/2]
    rot = torch.polar(torch.ones_like(angles), angles)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2))  # [L, H, D/2]
    return torch.view_as_real(xc * rot[:, None, :]).reshape(x.shape)


def ref_forward(meta, off, tokens: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """tokens [L], feat [VIS] -> logits [L, vocab] (fp32)."""
    def lin(x, w, b=None, la=None, lb=None):
        y = x @ w.T
        if b is not None:
            y = y + b
        if la is not None:
            y = y + (x @ la.T) @ lb.T  # LoRA, no scaling
        return y

    # bind network
    v = lin(feat, off["image_bind_proj.weight"], off["image_bind_proj.bias"])
    for k in (1, 2, 3):
        n = ref_rmsnorm(v, off[f"image_bind_norm_{k}.weight"])
        h1 = torch.nn.functional.silu(n @ off[f"image_bind_f1_{k}.weight"].T)
        v = v + (h1 * (n @ off[f"image_bind_f3_{k}.weight"].T)) @ off[f"image_bind_f2_{k}.weight"].T

    L = tokens.shape[0]
    pos = torch.arange(L)
    h = meta["tok_embeddings.weight"][tokens]
    mask = torch.full((L, L), float("-inf"), dtype=h.dtype).triu(1)
    rep = HEADS // KV_HEADS
    for i in range(LAYERS):
        p, a = f"layers.{i}.", f"llama.layers.{i}.attention."
        f = f"llama.layers.{i}.feed_forward."
        x = ref_rmsnorm(h, off[f"llama.layers.{i}.attention_norm.weight"])
        q = lin(x, meta[p + "attention.wq.weight"], off[a + "wq.bias"], off[a + "lora_wq_l1.weight"], off[a + "lora_wq_l2.weight"])
        k = lin(x, meta[p + "attention.wk.weight"], None, off[a + "lora_wk_l1.weight"], off[a + "lora_wk_l2.weight"])
        vv = lin(x, meta[p + "attention.wv.weight"], None, off[a + "lora_wv_l1.weight"], off[a + "lora_wv_l2.weight"])
        q = ref_rope(q.view(L, HEADS, HEAD_DIM), pos)
        k = ref_rope(k.view(L, KV_HEADS, HEAD_DIM), pos).repeat_interleave(rep, dim=1)
        vv = vv.view(L, KV_HEADS, HEAD_DIM).repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HEAD_DIM) + mask
        o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)  # [L, H, D]
        # one-token adapter: base wv only, per-head tanh gate, added at every position before wo
        adapter = v + off["prefix_query.weight"][i]
        va = (adapter @ meta[p + "attention.wv.weight"].T).view(KV_HEADS, HEAD_DIM).repeat_interleave(rep, dim=0)
        o = o + torch.tanh(off[a + "gate"].view(HEADS, 1)) * va
        h = h + lin(o.reshape(L, DIM), meta[p + "attention.wo.weight"], off[a + "wo.bias"], off[a + "lora_wo_l1.weight"],
                    off[a + "lora_wo_l2.weight"])
        x = ref_rmsnorm(h, off[f"llama.layers.{i}.ffn_norm.weight"])
        g1 = lin(x, meta[p + "feed_forward.w1.weight"], off[f + "w1.bias"], off[f + "lora_w1_l1.weight"], off[f + "lora_w1_l2.weight"])
        g3 = lin(x, meta[p + "feed_forward.w3.weight"], off[f + "w3.bias"], off[f + "lora_w3_l1.weight"], off[f + "lora_w3_l2.weight"])
        h = h + lin(torch.nn.functional.silu(g1) * g3, meta[p + "feed_forward.w2.weight"], off[f + "w2.bias"],
                    off[f + "lora_w2_l1.weight"], off[f + "lora_w2_l2.weight"])
    return ref_rmsnorm(h, off["llama.norm.weight"]) @ meta["output.weight"].T


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    tok = tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    meta, official = make_meta(g, tok.vocab_size), make_official(g)
    llama = write_meta_folder(root / "llama", meta, tok.path)
    torch.save({"model": official}, root / "7B.pth")
    return {"root": root, "meta": meta, "official": official, "llama": llama, "adapter": root / "7B.pth", "tok": tok}


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours") / "ckpt"
    convert_to_ours(out, official=sources["adapter"], llama_dir=sources["llama"], encoder="tiny_w3d",
                    encoder_weights=None)
    return out


# ---------------------------------------------------------------------- tests


def test_rope_row_permutation_round_trips_and_matches_rotate_half():
    w = torch.randn(HEADS * HEAD_DIM, 5)
    assert torch.equal(hf_to_meta_rows(meta_to_hf_rows(w, HEADS), HEADS), w)
    # A query vector in Meta layout rotated by Meta's rule equals HF's rotate_half on the permuted vector.
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q = torch.randn(3, HEADS, HEAD_DIM)  # [L, H, D] Meta layout
    pos = torch.arange(3)
    meta_rot = ref_rope(q, pos).float()
    inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    freqs = pos[:, None].float() * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    q_hf = meta_to_hf_rows(q.permute(1, 2, 0).reshape(HEADS * HEAD_DIM, 3), HEADS).reshape(HEADS, HEAD_DIM, 3)
    q_hf = q_hf.permute(2, 0, 1)[None].transpose(1, 2)  # [1, H, L, D]
    hf_rot, _ = apply_rotary_pos_emb(q_hf, q_hf, emb.cos()[None], emb.sin()[None])
    back = hf_rot[0].transpose(0, 1).permute(1, 2, 0).reshape(HEADS * HEAD_DIM, 3)
    torch.testing.assert_close(hf_to_meta_rows(back, HEADS).reshape(HEADS, HEAD_DIM, 3).permute(2, 0, 1), meta_rot,
                               rtol=1e-5, atol=1e-6)


def test_converted_logits_match_reference_equations(sources, converted):
    model = ImageBindLLM.from_pretrained(converted, device="cpu", dtype=torch.float32)
    assert model.config.num_kv_heads == KV_HEADS and model.config.lora_rank == RANK
    assert model.config.lm["intermediate_size"] == FFN_DIM and model.config.visual_dim == VIS
    tokens = torch.tensor(sources["tok"].encode("Describe the image in detail, please."))
    feat = torch.randn(VIS, generator=torch.Generator().manual_seed(3))
    # The reference runs in float64, so the comparison measures only our fp32 error.
    meta = {k: v.double() for k, v in sources["meta"].items()}
    off = {k: v.double() for k, v in sources["official"].items()}
    expected = ref_forward(meta, off, tokens, feat.double()).float()
    with torch.no_grad():
        visual = model.bind(feat[None])  # [1, 1, H]
        logits, _ = model(tokens[None], visual=visual)
        bare_ref = ref_forward(meta, {**off, **{k: torch.zeros_like(v) for k, v in off.items() if k.endswith("gate")}},
                               tokens, feat.double()).float()
        plain, _ = model(tokens[None])
    torch.testing.assert_close(logits[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain[0], bare_ref, rtol=0, atol=1e-5)  # no visual == zero gates
    assert (expected - bare_ref).abs().max() > 1e-2  # the adapter path matters in this fixture


def test_round_trip_ours_official_ours_is_identical(converted, tmp_path, sources):
    from safetensors.torch import load_file

    official_dir = convert_to_official(converted, tmp_path / "official")
    back = convert_to_ours(tmp_path / "back", official=official_dir / "imagebind_llm.pth",
                           llama_dir=official_dir / "llama", encoder="tiny_w3d", encoder_weights=None)
    for name in ("base.safetensors", "adapter.safetensors"):
        a, b = load_file(converted / name), load_file(back / name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.loads((converted / "config.json").read_text()) == json.loads((back / "config.json").read_text())
    # The official file has exactly the source keys and values (gates fp16, q/k un-permuted).
    again = read_torch(official_dir / "imagebind_llm.pth")
    assert again.keys() == sources["official"].keys()
    for k, v in sources["official"].items():
        assert torch.equal(again[k], v), k


def test_hf_base_gives_same_model_as_meta_base(converted, sources, tmp_path):
    from transformers import LlamaForCausalLM

    ours = ImageBindLLM.from_pretrained(converted, device="cpu", dtype=torch.float32)
    bare = LlamaForCausalLM(ours.config.llama_config())
    base = {k.removeprefix("lm."): v for k, v in ours.state_dict().items()
            if k.startswith("lm.") and not (k.endswith((".gate", ".bias")) or ".lora_" in k)}
    bare.load_state_dict(base)
    hf_dir = tmp_path / "hf"
    bare.save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(sources["tok"].path.read_bytes())
    out = convert_to_ours(tmp_path / "from_hf", official=sources["adapter"], hf_base=hf_dir, encoder="tiny_w3d",
                          encoder_weights=None)
    model = ImageBindLLM.from_pretrained(out, device="cpu", dtype=torch.float32)
    tokens = torch.tensor([sources["tok"].encode("hello there")])
    visual = torch.randn(1, 1, DIM)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, visual=visual)[0], ours(tokens, visual=visual)[0], rtol=0, atol=1e-6)


def test_hf_base_without_adapter_initialises_pretrain_model(converted, sources, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=DIM, intermediate_size=FFN_DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS, vocab_size=sources["tok"].vocab_size)
    hf_dir = tmp_path / "hf"
    LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    (hf_dir / "tokenizer.model").write_bytes(sources["tok"].path.read_bytes())
    out = convert_to_ours(tmp_path / "fresh", hf_base=hf_dir, encoder="tiny_w3d", encoder_weights=None)
    model = ImageBindLLM.from_pretrained(out, device="cpu")
    assert model.config.phase == "pretrain" and not model.config.w_lora
    assert model.num_trainable() == sum(p.numel() for n, p in model.named_parameters()
                                        if n.startswith(("bind.", "prefix_query.")) or n.endswith(".gate"))
    assert all(float(model.lm.model.layers[i].self_attn.gate.detach().abs().max()) == 0 for i in range(LAYERS))
    # the new bind network takes the chosen encoder's embeddings (tiny_w3d: 64-d), so media work end to end
    from safetensors.torch import save_file

    from ibllm_agent.encoders import ImageBind
    from ibllm_agent.types import Media

    assert model.config.visual_dim == 64 == model.bind.proj.in_features
    save_file(ImageBind.from_preset("tiny_w3d").state_dict(), str(out / "encoder.safetensors"))
    from ibllm_agent.multimodal import MultimodalLLM

    model = MultimodalLLM.from_llm(ImageBindLLM.from_pretrained(out, device="cpu"))
    feats = model.encode([Media("image", torch.zeros(3, 224, 224))])
    assert model.llm.visual_input(feats).visual.shape == (1, 1, DIM)


def test_bad_sources_raise_checkpoint_errors_naming_keys(sources, converted, tmp_path):
    kw = {"llama_dir": sources["llama"], "encoder": "tiny_w3d", "encoder_weights": None}
    # truncated file
    data = sources["adapter"].read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        convert_to_ours(tmp_path / "o1", official=tmp_path / "trunc.pth", **kw)
    # a missing LoRA matrix in one layer
    off = dict(sources["official"])
    del off["llama.layers.1.feed_forward.lora_w2_l2.weight"]
    torch.save({"model": off}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"lm\.model\.layers\.1\.mlp\.down_proj\.lora_b\.weight"):
        convert_to_ours(tmp_path / "o2", official=tmp_path / "missing.pth", **kw)
    # a mis-shaped tensor
    off = dict(sources["official"])
    off["llama.layers.0.attention.wo.bias"] = torch.zeros(DIM + 1)
    torch.save({"model": off}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"o_proj\.bias.*\(65,\)"):
        convert_to_ours(tmp_path / "o3", official=tmp_path / "shape.pth", **kw)
    # an unknown key
    off = dict(sources["official"])
    off["llama.layers.0.attention.adapter_foo"] = torch.zeros(1)
    torch.save({"model": off}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="adapter_foo"):
        convert_to_ours(tmp_path / "o4", official=tmp_path / "extra.pth", **kw)
    # a pickle that is not a plain tensor dict is refused by weights_only loading
    torch.save({"model": {"x": torch.zeros(1)}, "args": object.__new__(_Opaque)}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="pickle.pth") as err:
        convert_to_ours(tmp_path / "o5", official=tmp_path / "pickle.pth", **kw)
    # one line, and no advice to load with weights_only=False
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(CheckpointError, match="trunc.pth") as err:
        read_torch(tmp_path / "trunc.pth")
    assert "\n" not in str(err.value)
    # our own folder passed as a HF base gets a hint instead of a config-key complaint
    with pytest.raises(CheckpointError, match="ImageBind-LLM checkpoint .ours.*from_pretrained"):
        convert_to_ours(tmp_path / "o6", hf_base=converted, encoder="tiny_w3d", encoder_weights=None)
    (tmp_path / "notllama").mkdir()
    (tmp_path / "notllama" / "config.json").write_text('{"foo": 1}')
    with pytest.raises(CheckpointError, match="no hidden_size"):
        convert_to_ours(tmp_path / "o7", hf_base=tmp_path / "notllama")


class _Opaque:
    pass


def _model_7b_meta():
    return ImageBindLLM.from_preset("7b", device="meta")


def test_every_official_adapter_key_maps_to_the_7b_model(manifests_dir):
    model = _model_7b_meta()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    manifest = json.loads((manifests_dir / "imagebind_llm_7b_adapter.json").read_text())
    mapped = set()
    for key, shape in manifest_keys(manifest):
        ours, _ = official_key_to_ours(key)
        assert ours in shapes, key
        assert shapes[ours] == shape, (key, ours)
        mapped.add(ours)
    assert len(mapped) == 720


def test_key_maps_are_one_table_read_both_ways(manifests_dir):
    """ours -> official is derived from the same templates: every official key round-trips, with the
    same RoPE rows kind, and the rows kinds are exactly the q/k-row tensors."""
    from ibllm_agent.model.convert import ours_key_to_official

    manifest = json.loads((manifests_dir / "imagebind_llm_7b_adapter.json").read_text())
    rows = {}
    for key, _ in manifest_keys(manifest):
        ours, kind = official_key_to_ours(key)
        assert ours_key_to_official(ours) == (key, kind)
        if kind:
            rows[key.split(".", 3)[-1]] = kind
    assert rows == {"attention.wq.bias": "q", "attention.lora_wq_l2.weight": "q", "attention.lora_wk_l2.weight": "k"}
    assert official_key_to_ours("image_bind_norm_1.weight") == ("bind.norms.0.weight", None)
    assert ours_base_to_meta("lm.model.layers.3.self_attn.k_proj.weight") == ("layers.3.attention.wk.weight", "k")
    for bad in ("image_bind_norm_0.weight", "llama.layers.0.attention.wx.bias", "llama.layers.x.attention.gate"):
        with pytest.raises(CheckpointError, match="unknown key"):
            official_key_to_ours(bad)
    with pytest.raises(CheckpointError, match="no counterpart in the Meta LLaMA layout"):
        ours_base_to_meta("bind.proj.weight")


def test_every_meta_llama_key_maps_to_the_7b_model(manifests_dir):
    from ibllm_agent.model.convert import meta_base_to_ours

    model = _model_7b_meta()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    manifest = json.loads((manifests_dir / "llama_7b_meta.json").read_text())
    fake = {k: torch.empty(shape, device="meta") for k, shape in manifest_keys(manifest)}
    ours = meta_base_to_ours(fake, 32, 32)
    assert set(fake) - {"rope.freqs"} == {ours_base_to_meta(k)[0] for k in ours}
    for k, v in ours.items():
        assert shapes[k] == tuple(v.shape), k
    # Together the two manifests cover every weight of our 7B model.
    adapter = json.loads((manifests_dir / "imagebind_llm_7b_adapter.json").read_text())
    covered = set(ours) | {official_key_to_ours(k)[0] for k, _ in manifest_keys(adapter)}
    assert covered == set(shapes)


# ---------------------------------------------------------------------- CLI


def _cli(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ibllm_agent", "convert", *map(str, args)], capture_output=True, check=False,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_cli_help_documents_the_options():
    res = _cli("--help")
    assert res.returncode == 0
    for opt in ("--official", "--llama-dir", "--out", "--hf-base", "--to-official", "--dtype"):
        assert opt in res.stdout


def _cli_in_process(*args):
    import typer
    from typer.testing import CliRunner

    from ibllm_agent.cli import convert as convert_cli

    app = typer.Typer()
    convert_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep typer in multi-command mode
    return CliRunner().invoke(app, ["convert", *map(str, args)])


def test_cli_converts_both_ways(sources, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ours"
    res = _cli_in_process("--official", sources["adapter"], "--llama-dir", sources["llama"].parent, "--llama-type",
                          "7B", "--out", out, "--encoder", "tiny_w3d", "--dtype", "fp16")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(out)
    adapter = load_file(out / "adapter.safetensors")
    assert all(v.dtype == torch.float16 for v in adapter.values())
    assert json.loads((out / "config.json").read_text())["encoder"] == "tiny_w3d"
    res = _cli_in_process("--to-official", out, "--out", tmp_path / "off")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "off" / "imagebind_llm.pth").is_file() and (tmp_path / "off" / "llama" / "params.json").is_file()
    res = _cli_in_process("--to-official", out, "--out", tmp_path / "off")  # non-empty output, no --force
    assert isinstance(res.exception, ConfigError) and "not empty" in str(res.exception)


def test_cli_reports_a_broken_checkpoint_in_one_line(sources, tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    res = _cli("--official", tmp_path / "bad.pth", "--llama-dir", sources["llama"], "--out", tmp_path / "x")
    assert res.returncode == 2 and "bad.pth" in res.stderr and "Traceback" not in res.stderr


def test_legacy_bridge_and_pretrain_only_adapters(sources, tmp_path):
    """7B-beta's LayerNorm+bias bridge is detected; an adapter without bias/LoRA (7B-pretrained) builds a
    model without them, taking the norms from the base."""
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(9)
    off = dict(sources["official"])
    for k in (1, 2, 3):
        off[f"image_bind_norm_{k}.bias"] = _rand(g, DIM)
        for j, n in ((1, 4 * DIM), (2, DIM), (3, 4 * DIM)):
            off[f"image_bind_f{j}_{k}.bias"] = _rand(g, n)
    torch.save({"model": off}, tmp_path / "beta.pth")
    out = convert_to_ours(tmp_path / "beta", official=tmp_path / "beta.pth", llama_dir=sources["llama"],
                          encoder="tiny_w3d", encoder_weights=None)
    model = ImageBindLLM.from_pretrained(out, device="cpu")
    assert model.config.bind_variant == "legacy"
    torch.testing.assert_close(model.bind.norms[1].bias, off["image_bind_norm_2.bias"])
    torch.testing.assert_close(model.bind.ffn[2].w2.bias, off["image_bind_f2_3.bias"])

    pre = {k: v for k, v in sources["official"].items()
           if k.startswith(("image_bind", "prefix_query")) or k.endswith("attention.gate")}
    torch.save({"model": pre}, tmp_path / "pre.pth")
    out = convert_to_ours(tmp_path / "pre", official=tmp_path / "pre.pth", llama_dir=sources["llama"],
                          encoder="tiny_w3d", encoder_weights=None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["w_bias"] is False and cfg["w_lora"] is False
    adapter = load_file(out / "adapter.safetensors")
    assert not any(".lora_" in k or k.endswith("proj.bias") and k.startswith("lm.") for k in adapter)
    torch.testing.assert_close(adapter["lm.model.layers.0.input_layernorm.weight"],
                               sources["meta"]["layers.0.attention_norm.weight"])


def test_full_training_checkpoint_converts_like_the_release(sources, converted, tmp_path):
    """convert_ckpt.py's rules are applied: llma -> llama, encoder and frozen base tensors dropped."""
    from safetensors.torch import load_file

    full = {("llma." + k[len("llama."):] if k.startswith("llama.") else k): v for k, v in sources["official"].items()}
    full["image_bind.modality_heads.vision.2.weight"] = torch.zeros(2, 2)
    full["llma.layers.0.attention.wq.weight"] = torch.zeros(DIM, DIM)  # frozen copy of the base
    full["prefix_projector_norm.weight"] = torch.zeros(DIM)
    torch.save({"model": full, "epoch": torch.tensor(3)}, tmp_path / "checkpoint-3.pth")
    out = convert_to_ours(tmp_path / "o", official=tmp_path / "checkpoint-3.pth", llama_dir=sources["llama"],
                          encoder="tiny_w3d", encoder_weights=None)
    for name in ("base.safetensors", "adapter.safetensors"):
        a, b = load_file(converted / name), load_file(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_from_registry_uses_the_weights_dir(sources, tmp_path, monkeypatch):
    """--from-registry reads <weights_dir>/imagebind_llm/7B.pth and <weights_dir>/llama/7B_chinese (or the
    --llama-type given), writes <weights_dir>/official."""
    import shutil

    weights = tmp_path / "weights"
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(weights))
    res = _cli_in_process("--from-registry", "--encoder", "tiny_w3d")
    assert res.exit_code != 0 and "imagebind_llm_7b" in str(res.exception)  # MissingWeightError names it
    (weights / "imagebind_llm").mkdir(parents=True)
    shutil.copyfile(sources["adapter"], weights / "imagebind_llm" / "7B.pth")
    shutil.copytree(sources["llama"].parent, weights / "llama")
    # The stable adapter's base is Open-Chinese-LLaMA (llama/7B_chinese): missing here, and said so.
    res = _cli_in_process("--from-registry", "--encoder", "tiny_w3d")
    assert res.exit_code != 0 and "pull imagebind-llm-7b" in str(res.exception)
    res = _cli_in_process("--from-registry", "--llama-type", "7B", "--encoder", "tiny_w3d")
    assert res.exit_code == 0, res.output
    model = ImageBindLLM.from_pretrained(weights / "official", device="cpu")
    assert model.config.lora_rank == RANK


def test_wrong_tokenizer_and_llama_type_hint(sources, tmp_path):
    from ibllm_agent.errors import TokenizerError

    big = tiny_tokenizer(1024)
    with pytest.raises(TokenizerError, match="1024 pieces"):
        convert_to_ours(tmp_path / "o", official=sources["adapter"], llama_dir=sources["llama"], tokenizer=big.path,
                        encoder="tiny_w3d", encoder_weights=None)
    with pytest.raises(CheckpointError, match=r"no params.json.*\['7B'\].*--llama-type"):
        convert_to_ours(tmp_path / "o", llama_dir=sources["llama"].parent, encoder="tiny_w3d", encoder_weights=None)


def test_meta_params_round_trip_keeps_rope_settings():
    """--to-official writes a params.json that rebuilds the same LM config, LLaMA-3.1 rope scaling included."""
    from ibllm_agent.model.config import lm_config_from_meta_params
    from ibllm_agent.model.convert import meta_params_from_lm

    for params in (
        {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "norm_eps": 1e-5,
         "vocab_size": 512},
        {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": 1.3,
         "norm_eps": 1e-5, "vocab_size": 512, "rope_theta": 500000.0, "use_scaled_rope": True},
    ):
        lm = lm_config_from_meta_params(params)
        again = lm_config_from_meta_params(meta_params_from_lm(lm))
        assert again == lm
    # a transformers-4 style HF config (rope_scaling) is understood too
    lm = lm_config_from_meta_params(params)
    hf4 = {k: v for k, v in lm.items() if k != "rope_parameters"}
    hf4.update(rope_theta=500000.0, rope_scaling={k: v for k, v in lm["rope_parameters"].items() if k != "rope_theta"})
    assert meta_params_from_lm(hf4)["use_scaled_rope"] is True and meta_params_from_lm(hf4)["rope_theta"] == 500000.0


def test_adapter_injecting_only_the_last_layers(sources, converted, tmp_path):
    """A reference checkpoint with query_layer < n_layers has a prefix_query row per injected (last) layer but
    gates in every layer; the unused gates are dropped and the model equals the full one with those gates at 0."""
    off = dict(sources["official"])
    off["prefix_query.weight"] = off["prefix_query.weight"][1:]  # query_layer = 1: only the last layer
    torch.save({"model": off}, tmp_path / "last1.pth")
    out = convert_to_ours(tmp_path / "last1", official=tmp_path / "last1.pth", llama_dir=sources["llama"],
                          encoder="tiny_w3d", encoder_weights=None)
    part = ImageBindLLM.from_pretrained(out, device="cpu", dtype=torch.float32)
    full = ImageBindLLM.from_pretrained(converted, device="cpu", dtype=torch.float32)
    assert part.config.injected_layers == [1] and not hasattr(part.lm.model.layers[0].self_attn, "gate")
    tokens = torch.tensor([sources["tok"].encode("hello there, what is this?")])
    feat = torch.randn(1, VIS, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full.lm.model.layers[0].self_attn.gate.zero_()
        a, _ = part(tokens, visual=part.bind(feat))
        b, _ = full(tokens, visual=full.bind(feat))
        c, _ = part(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # fp32: x + 0·δ rounds differently from x
    assert (a - c).abs().max() > 1e-3  # the last layer's injection is live


def test_cli_encoder_weights_none(sources, tmp_path):
    out = tmp_path / "ours"
    res = _cli_in_process("--official", sources["adapter"], "--llama-dir", sources["llama"], "--out", out,
                          "--encoder", "tiny_w3d", "--encoder-weights", "none")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "tiny_w3d" and cfg["encoder_weights"] is None


def test_cli_rejects_an_unusable_output_path(converted, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = _cli_in_process("--to-official", converted, "--out", tmp_path / "afile")
    assert isinstance(res.exception, ConfigError) and "is a file, not a folder" in str(res.exception)
    res = _cli_in_process("--to-official", converted, "--out", tmp_path / "afile" / "sub")
    assert isinstance(res.exception, ConfigError) and "cannot create output folder" in str(res.exception)
