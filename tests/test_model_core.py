"""ImageBindLLM core: phases and trainable counts, gated injection, PEFT, fusion, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ibllm_agent.errors import ConfigError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.config import ImageBindLLMConfig, config_tiny, lm_config_from_meta_params
from ibllm_agent.model.fusion import fuse, fuse_batch
from ibllm_agent.model.peft import PeftLinear
from ibllm_agent.multimodal import MultimodalLLM
from ibllm_agent.types import Media


@pytest.fixture(scope="module")
def tiny() -> ImageBindLLM:
    return ImageBindLLM.from_preset("tiny", seed=0)


def _set_gates(model: ImageBindLLM, seed: int = 1, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in model.config.layers:
            gate = model.lm.model.layers[i].self_attn.gate
            gate.copy_(torch.randn(gate.shape, generator=g) * scale)


def _randomise_peft(model: ImageBindLLM, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and name.startswith("lm.") or ".lora_b." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------------- 7B structure (meta device)


def _model_7b(manifests_dir, **overrides) -> ImageBindLLM:
    params = json.loads((manifests_dir / "llama_7b_params.json").read_text())
    lm = lm_config_from_meta_params(params, vocab_size=32000)
    assert lm["intermediate_size"] == 11008
    return ImageBindLLM(ImageBindLLMConfig(lm=lm, **overrides), device="meta")


def test_7b_trainable_counts_match_reference(manifests_dir):
    model = _model_7b(manifests_dir)
    model.set_phase("pretrain")
    assert model.num_trainable() == 608_322_560
    model.set_phase("finetune")
    assert model.num_trainable() == 41_340_928
    model.set_phase("inference")
    assert model.num_trainable() == 0 and not model.training


def test_7b_pretrain_built_without_peft_then_finetune_adds_it(manifests_dir):
    model = _model_7b(manifests_dir, w_bias=False, w_lora=False, phase="pretrain")
    assert model.num_trainable() == 608_322_560
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    model.set_phase("finetune")  # adds zero biases / LoRA like the reference's finetune build
    assert model.num_trainable() == 41_340_928
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    layer0 = {n.removeprefix("lm.model.layers.0.") for n in names if n.startswith("lm.model.layers.0.")}
    assert "self_attn.k_proj.bias" not in layer0 and "self_attn.v_proj.bias" not in layer0
    assert {"self_attn.q_proj.bias", "self_attn.o_proj.bias", "mlp.gate_proj.bias", "mlp.up_proj.bias",
            "mlp.down_proj.bias"} <= layer0
    assert sum(".lora_" in n for n in layer0) == 14
    assert "lm.model.norm.weight" in names and "lm.model.layers.0.self_attn.gate" not in names


def test_unknown_phase_is_config_error(tiny):
    with pytest.raises(ConfigError, match="phase"):
        tiny.set_phase("warmup")


# ---------------------------------------------------------------------- injection


def _bare_llama(model: ImageBindLLM):
    """A plain transformers LlamaForCausalLM with the model's base weights (no gates/bias/LoRA)."""
    from transformers import LlamaForCausalLM

    bare = LlamaForCausalLM(model.config.llama_config())
    state = {k.removeprefix("lm."): v for k, v in model.state_dict().items()
             if k.startswith("lm.") and not (k.endswith((".gate", ".bias")) or ".lora_" in k)}
    bare.load_state_dict(state, strict=True)
    return bare.eval()


def test_zero_gates_give_the_bare_base_model(tiny):
    ids = torch.tensor([tiny.tokenizer.encode("Describe the image in detail.")])
    bare = _bare_llama(tiny)
    with torch.no_grad():
        ref = bare(input_ids=ids).logits
        plain, _ = tiny(ids)
        visual = torch.randn(1, 1, tiny.config.hidden_size) * 5
        injected, _ = tiny(ids, visual=visual)
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(injected, ref, rtol=0, atol=1e-6)


def test_nonzero_gate_changes_output_only_with_visual():
    model = ImageBindLLM.from_preset("tiny", seed=0)
    ids = torch.tensor([model.tokenizer.encode("What is in the photo?")])
    with torch.no_grad():
        before, _ = model(ids)
        _set_gates(model)
        after_plain, _ = model(ids)
        v1 = torch.randn(1, 1, model.config.hidden_size)
        out1, _ = model(ids, visual=v1)
        out2, _ = model(ids, visual=-v1)
    torch.testing.assert_close(after_plain, before, rtol=0, atol=0)  # no visual -> no injection
    assert (out1 - before).abs().max() > 1e-3
    assert (out1 - out2).abs().max() > 1e-3  # the output depends on the visual input


def test_injection_equals_reference_equation_per_layer():
    """o_proj of layer 1 must compute o_proj(x + δ) with δ = flatten(tanh(g)·repeat_kv(W_v(v + p_1)))
    added at every position (bias and LoRA of o_proj apply to it)."""
    from transformers.models.llama.modeling_llama import repeat_kv

    from ibllm_agent.model.peft import PeftLinear

    model = ImageBindLLM.from_preset("tiny", seed=3)
    _set_gates(model, seed=4)
    _randomise_peft(model)
    c = model.config
    assert c.num_kv_heads < c.num_heads  # the tiny preset exercises GQA
    ids = torch.tensor([model.tokenizer.encode("a dog on the beach")]).repeat(2, 1)
    visual = torch.randn(2, 1, c.hidden_size)
    seen = []
    o_proj = model.lm.model.layers[1].self_attn.o_proj
    handle = o_proj.register_forward_hook(lambda m, a, out: seen.append((a[0].detach().clone(), out.detach().clone())))
    try:
        with torch.no_grad():
            model(ids, visual=visual)
    finally:
        handle.remove()
    x, y = seen[0]  # x: attention output [B, T, n_heads·D] before the injection
    attn = model.lm.model.layers[1].self_attn
    a = visual + model.prefix_query.weight[1]
    va = (a @ attn.v_proj.weight.T).view(2, c.num_kv_heads, 1, c.head_dim)  # [B, n_kv, 1, D], base weight only
    va = repeat_kv(va, c.num_heads // c.num_kv_heads)[:, :, 0]  # [B, n_heads, D]
    delta = (torch.tanh(attn.gate.view(1, -1, 1)) * va).reshape(2, 1, -1)
    with torch.no_grad():
        expected = PeftLinear.forward(o_proj, x + delta)  # the plain linear (+bias +LoRA) on the shifted input
        unshifted = PeftLinear.forward(o_proj, x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert (y - unshifted).abs().max() > 1e-3


def test_injected_layers_are_configurable():
    model = ImageBindLLM.from_preset("tiny", seed=0, injected_layers=[1])
    assert model.prefix_query.weight.shape == (1, model.config.hidden_size)
    assert not hasattr(model.lm.model.layers[0].self_attn, "gate")
    assert model.lm.model.layers[1].self_attn.gate.shape == (1, model.config.num_heads, 1, 1)
    with pytest.raises(ConfigError, match="injected_layers"):
        config_tiny(512, 64, injected_layers=[5])


def test_peft_linear_math():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6, bias=False)
    p = PeftLinear.from_linear(lin, bias=True, lora_rank=3)
    x = torch.randn(4, 8)
    torch.testing.assert_close(p(x), lin(x), rtol=0, atol=0)  # zero bias, zero B: unchanged
    with torch.no_grad():
        p.bias.normal_()
        p.lora_b.weight.normal_()
    expected = x @ lin.weight.T + p.bias + (x @ p.lora_a.weight.T) @ p.lora_b.weight.T  # no alpha/r scaling
    torch.testing.assert_close(p(x), expected)
    assert p.weight is lin.weight  # shares the base weight, no copy
    assert set(dict(p.named_parameters())) == {"weight", "bias", "lora_a.weight", "lora_b.weight"}


def test_finetune_peft_changes_output_and_v_path_ignores_v_lora():
    """The adapter path uses v_proj's BASE weight: LoRA on v_proj must not change δ."""
    model = ImageBindLLM.from_preset("tiny", seed=0)
    _set_gates(model)
    visual = torch.randn(1, 1, model.config.hidden_size)
    d0 = model.injection(visual).deltas[0].clone()
    with torch.no_grad():
        model.lm.model.layers[0].self_attn.v_proj.lora_b.weight.normal_()
    torch.testing.assert_close(model.injection(visual).deltas[0], d0, rtol=0, atol=0)


# ---------------------------------------------------------------------- fusion / media


def test_fuse_matches_numpy():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 16)).astype(np.float32)
    w = np.array([1.0, 0.5, 0.25], dtype=np.float32)
    expected = sum((w[i] / (w.sum() + 1e-6)) * e[i] / np.linalg.norm(e[i]) for i in range(3))
    got = fuse(torch.from_numpy(e), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.linalg.norm(got) < 1.0  # not re-normalised when inputs disagree
    batch = fuse_batch([(torch.from_numpy(e[:1]), torch.ones(1)), (torch.from_numpy(e), torch.from_numpy(w))])
    np.testing.assert_allclose(batch[1].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(batch[0].numpy(), e[0] / np.linalg.norm(e[0]) / (1 + 1e-6), rtol=1e-6)


class _RecordingCache:
    def __init__(self):
        self.calls = []

    def enhance(self, feats, k=10, t=20.0, alpha=0.5):
        self.calls.append((feats.clone(), k, t, alpha))
        return torch.nn.functional.normalize(feats + 1.0, dim=-1)


def test_encode_media_fuses_normalised_embeddings_and_uses_cache():
    mm = MultimodalLLM.from_llm(ImageBindLLM.from_preset("tiny", seed=0))
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 224, 224, generator=g)
    aud = torch.randn(3, 1, 128, 204, generator=g)  # 3 preprocessed fbank clips (media.load's item shape)
    with torch.no_grad():
        e_img = mm.media.encoder.encode("image", img[None]).float()[0]
        e_pts = mm.media.encoder.encode("audio", aud[None]).float()[0]
    feats = mm.encode([Media("image", img, 1.0), Media("audio", aud, 0.5)]).features
    w = torch.tensor([1.0, 0.5]) / (1.5 + 1e-6)
    expected = w[0] * e_img / e_img.norm() + w[1] * e_pts / e_pts.norm()
    torch.testing.assert_close(feats[0], expected, rtol=1e-5, atol=1e-6)

    cache = _RecordingCache()
    mm = mm.with_cache(cache)
    from ibllm_agent.types import CacheSettings

    enhanced = mm.encode([Media("image", img)], CacheSettings(k=3, t=7.0, alpha=0.25)).features
    assert len(cache.calls) == 1 and cache.calls[0][1:] == (3, 7.0, 0.25)
    torch.testing.assert_close(enhanced[0], torch.nn.functional.normalize(e_img / e_img.norm() / (1 + 1e-6) + 1, dim=-1))
    mm.encode([Media("image", img)], CacheSettings(enabled=False))
    assert len(cache.calls) == 1  # disabled: not consulted


def test_text_only_policies():
    model = ImageBindLLM.from_preset("tiny", seed=0)
    _set_gates(model)
    mm = MultimodalLLM.from_llm(model)
    ids = torch.tensor([model.tokenizer.encode("Hello there")])
    inj = model.visual_input(mm.encode(None))
    assert inj is not None  # zero_image: the reference's blank-image placeholder is injected
    with torch.no_grad():
        zero = mm.media.encoder.encode("image", torch.zeros(1, 3, 224, 224)).float()
        expected_visual = model.bind(torch.nn.functional.normalize(zero, dim=-1) / (1 + 1e-6))
    torch.testing.assert_close(inj.visual, expected_visual, rtol=1e-5, atol=1e-6)
    off = ImageBindLLM.from_preset("tiny", seed=0, text_only="off")
    _set_gates(off)
    off_mm = MultimodalLLM.from_llm(off)
    assert off.visual_input(off_mm.encode(None)) is None
    with torch.no_grad():
        a, _ = off(ids)
        b, _ = off(ids, features=off_mm.encode(None))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batched_forward_equals_single():
    model = ImageBindLLM.from_preset("tiny", seed=0)
    _set_gates(model)
    _randomise_peft(model)
    ids = torch.tensor([model.tokenizer.encode("Describe the sound.")])
    visual = torch.randn(2, 1, model.config.hidden_size)
    with torch.no_grad():
        both, _ = model(ids.repeat(2, 1), visual=visual)
        one, _ = model(ids, visual=visual[:1])
        two, _ = model(ids, visual=visual[1:])
    torch.testing.assert_close(both[0], one[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], two[0], rtol=1e-5, atol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-4


def test_batched_media_equals_single():
    model = MultimodalLLM.from_llm(ImageBindLLM.from_preset("tiny", seed=0))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 224, 224, generator=g), torch.randn(3, 224, 224, generator=g)
    batch = model.encode([[Media("image", a)], [Media("image", b), Media("image", a, 2.0)]]).features
    single_a = model.encode([Media("image", a)]).features
    single_ba = model.encode([Media("image", b), Media("image", a, 2.0)]).features
    torch.testing.assert_close(batch[0], single_a[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch[1], single_ba[0], rtol=1e-5, atol=1e-6)


def test_bad_media_weights_and_shapes_are_typed_errors():
    model = ImageBindLLM.from_preset("tiny", seed=0)
    mm = MultimodalLLM.from_llm(model)
    img = torch.zeros(3, 224, 224)
    with pytest.raises(ConfigError, match="weights"):
        mm.encode([Media("image", img, 0.0)])
    with pytest.raises(ConfigError, match="Media"):
        mm.encode([["not media"]])
    with pytest.raises(ConfigError, match="hidden size"):
        model.injection(torch.zeros(1, 1, 7))
    ids = torch.ones(3, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="batch size 2 but input_ids has 3"):
        model(ids, visual=torch.zeros(2, 1, model.config.hidden_size))
    logits, _ = model(ids, visual=torch.zeros(1, 1, model.config.hidden_size))  # one visual token for all rows
    assert logits.shape[:2] == (3, 4)
    # an adapter whose bind network does not take the encoder's width fails with a clear message
    odd = ImageBindLLM.from_preset("tiny", seed=0, visual_dim=24)
    assert odd.bind.proj.in_features == 24
    with pytest.raises(ConfigError, match="64-d embeddings but the bind network takes visual_dim=24"):
        MultimodalLLM.from_llm(odd)
    with pytest.raises(ConfigError, match="64-d embeddings but the bind network takes visual_dim=24"):
        odd(ids, features=mm.encode([Media("image", img)]).features.repeat(3, 1))


def test_mixed_batch_with_text_only_off_injects_only_rows_with_media():
    model = ImageBindLLM.from_preset("tiny", seed=0, text_only="off")
    _set_gates(model)
    img = torch.zeros(3, 224, 224)
    img[1] = 1.0
    mm = MultimodalLLM.from_llm(model)
    ids = torch.tensor([model.tokenizer.encode("What is this?")]).repeat(2, 1)
    feats = mm.encode([[Media("image", img)], []])
    assert feats.active.tolist() == [True, False]
    inj = model.visual_input(feats)
    assert inj is not None and inj.batch_size == 2
    with torch.no_grad():
        mixed, _ = model(ids, visual=inj)
        same, _ = model(ids, features=feats.features, active=feats.active)
        plain, _ = model(ids[:1])
        alone, _ = model(ids[:1], features=mm.encode([Media("image", img)]))
    torch.testing.assert_close(same, mixed, rtol=0, atol=0)
    torch.testing.assert_close(mixed[1], plain[0], rtol=0, atol=1e-6)  # no media, policy off: bare model
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-5, atol=1e-5)
    assert (mixed[0] - plain[0]).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["rmsnorm", "legacy"])
def test_bind_network_equations_and_keys(variant):
    from ibllm_agent.model.bind import BindNetwork

    torch.manual_seed(0)
    net = BindNetwork(12, 16, variant=variant)
    keys = set(net.state_dict())
    assert {"proj.weight", "proj.bias", "norms.2.weight", "ffn.0.w1.weight", "ffn.2.w3.weight"} <= keys
    assert ("norms.0.bias" in keys) == ("ffn.1.w2.bias" in keys) == (variant == "legacy")
    assert net.ffn[0].w1.weight.shape == (64, 16)  # 4·dim
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    f = torch.randn(3, 12)
    x = f @ net.proj.weight.T + net.proj.bias
    for k in range(3):
        n = net.norms[k]
        if variant == "legacy":
            h = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
            h = h * n.weight + n.bias
        else:
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * n.weight
        ffn = net.ffn[k]
        x = x + ffn.w2(torch.nn.functional.silu(ffn.w1(h)) * ffn.w3(h))
    torch.testing.assert_close(net(f), x[:, None, :], rtol=1e-5, atol=1e-6)


def test_deep_copy_keeps_its_own_injection_wiring():
    import copy

    model = ImageBindLLM.from_preset("tiny", seed=0)
    _set_gates(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm.model.layers[0].self_attn.gate.mul_(-1)
    ids = torch.tensor([model.tokenizer.encode("a photo")])
    v = torch.randn(1, 1, model.config.hidden_size)
    with torch.no_grad():
        a, _ = model(ids, visual=v)
        b, _ = clone(ids, visual=v)
        bare, _ = clone(ids)
    assert (b - bare).abs().max() > 1e-3  # the copy injects through its own hooks
    assert (a - b).abs().max() > 1e-3  # ... with its own gates
