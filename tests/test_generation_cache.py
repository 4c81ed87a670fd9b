"""Prefix reuse across calls: crop the cached KV to the longest common prefix, prefill only the rest."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ibllm_agent.model.generation import Generator, hf_step
from ibllm_agent.model.tokenizer import tiny_tokenizer
from ibllm_agent.types import Sampling

GREEDY = Sampling(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(1)
    m = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=None)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30.0)  # clear greedy winners
    return m


class Recorder:
    """Wraps a step; keeps the last-position logits of every call and the input lengths."""

    def __init__(self, model):
        self.inner = hf_step(model)
        self.logits: list[torch.Tensor] = []
        self.inputs: list[int] = []

    def __call__(self, input_ids, attention_mask, position_ids, past):
        logits, past = self.inner(input_ids, attention_mask, position_ids, past)
        self.logits.append(logits[:, -1].clone())
        self.inputs.append(input_ids.shape[1])
        return logits, past


def agent_turn(tok, eng: Generator, key, steps: int = 3):
    """A ReAct-like turn: each prompt = previous prompt + model output + an observation."""
    prompt = tok.encode("GPT4Tools has access to tools.\nHuman: remove the cat from image/ab12cd34.png\n"
                        "Thought: Do I need to use a tool? Yes\nAction:")
    outputs = []
    for n in range(steps):
        [res] = eng.generate([prompt], GREEDY, context_key=key)
        outputs.append(res)
        prompt = prompt + res.token_ids + tok.encode(f"\nObservation: image/{n}f{n}a.png\nThought:", bos=False)
    return outputs


def test_agent_turn_reuses_prefix_with_identical_results(model, tok):
    fresh_rec, reuse_rec = Recorder(model), Recorder(model)
    fresh = Generator(fresh_rec, tok, context_length=256, prefix_cache=False)
    reuse = Generator(reuse_rec, tok, context_length=256)
    a = agent_turn(tok, fresh, key="media-1")
    b = agent_turn(tok, reuse, key="media-1")
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.text for r in a] == [r.text for r in b]
    assert len(fresh_rec.logits) == len(reuse_rec.logits)
    for x, y in zip(fresh_rec.logits, reuse_rec.logits):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    # Every prompt token is either computed or reused, never both; steps 2 and 3 reuse.
    total = sum(r.prompt_tokens for r in b)
    assert fresh.stats.prefill_tokens_computed == total and fresh.stats.prefill_tokens_reused == 0
    assert reuse.stats.prefill_tokens_computed + reuse.stats.prefill_tokens_reused == total
    assert b[0].reused_tokens == 0 and b[1].reused_tokens > 0 and b[2].reused_tokens > b[1].reused_tokens
    # step 2 reuses its whole previous prompt plus the fed completion tokens (all but the last)
    assert b[1].reused_tokens >= b[0].prompt_tokens + len(b[0].token_ids) - 1
    # What the model actually ran on: exactly the reused tokens fewer than without reuse.
    assert sum(fresh_rec.inputs) - sum(reuse_rec.inputs) == reuse.stats.prefill_tokens_reused > 0


def test_text_level_agent_prompt_reuses_prefix(model, tok):
    """The chat layer rebuilds each prompt as text and re-encodes it; the prefix still matches."""
    eng = Generator(hf_step(model), tok, context_length=256)
    first = "GPT4Tools has access to tools.\nHuman: what is in image/ab12cd34.png?\nThought:"
    s = Sampling(max_new_tokens=10, temperature=0, stop=("\nObservation:",))
    out = eng.generate([tok.encode(first)], s, context_key="t")[0].text
    second = first + out + "\nObservation: a cat on a sofa\nThought:"
    [res] = eng.generate([tok.encode(second)], s, context_key="t")
    # Everything up to (at most) the last token of the first prompt comes from the cache.
    assert res.reused_tokens >= len(tok.encode(first)) - 2


def test_different_or_no_context_key_never_reuses(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256)
    ids = tok.encode("Describe the image in detail.")
    eng.generate([ids], GREEDY, context_key="image-A")
    eng.generate([ids + [300, 301]], GREEDY, context_key="image-B")
    eng.generate([ids + [300, 301]], GREEDY, context_key=None)
    eng.generate([ids + [300, 301]], GREEDY, context_key=None)
    assert eng.stats.prefill_tokens_reused == 0
    eng.generate([ids + [300, 301, 302]], GREEDY, context_key="image-B")
    assert eng.stats.prefill_tokens_reused == len(ids) + 2


def test_divergent_prompt_crops_to_common_prefix(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256)
    fresh = Generator(hf_step(model), tok, context_length=256, prefix_cache=False)
    first = tok.encode("Human: what is in image/ab12cd34.png? AI: a cat on a sofa")
    second = first[:6] + tok.encode(" dog running on the beach", bos=False)
    eng.generate([first], GREEDY, context_key="k")
    [res] = eng.generate([second], GREEDY, context_key="k")
    assert res.reused_tokens == 6 == eng.stats.prefill_tokens_reused - 0
    assert res.token_ids == fresh.generate([second], GREEDY)[0].token_ids


def test_same_prompt_twice_reuses_all_but_last_token(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256)
    ids = tok.encode("Thought: Do I need to use a tool? No\nAI:")
    a = eng.generate([ids], GREEDY, context_key=0)[0]
    b = eng.generate([ids], GREEDY, context_key=0)[0]
    assert b.reused_tokens == len(ids) - 1 and a.token_ids == b.token_ids


def test_lru_eviction(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256, max_cached_prefixes=1)
    ids = tok.encode("Describe the image in detail.")
    eng.generate([ids], GREEDY, context_key="A")
    eng.generate([ids], GREEDY, context_key="B")  # evicts A
    assert eng.generate([ids], GREEDY, context_key="A")[0].reused_tokens == 0
    assert eng.generate([ids], GREEDY, context_key="A")[0].reused_tokens == len(ids) - 1
    eng.clear_cache()
    assert eng.generate([ids], GREEDY, context_key="A")[0].reused_tokens == 0


def test_stream_closed_early_keeps_a_consistent_cache(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256)
    fresh = Generator(hf_step(model), tok, context_length=256, prefix_cache=False)
    ids = tok.encode("Describe the image in detail.")
    stream = eng.stream(ids, Sampling(max_new_tokens=30, temperature=0), context_key="k")
    next(stream), next(stream)
    stream.close()
    follow = ids + tok.encode(" The image shows", bos=False)
    [res] = eng.generate([follow], GREEDY, context_key="k")
    assert res.reused_tokens >= len(ids)
    assert res.token_ids == fresh.generate([follow], GREEDY)[0].token_ids


def test_batches_bypass_the_prefix_cache(model, tok):
    eng = Generator(hf_step(model), tok, context_length=256)
    ids = tok.encode("Describe the image in detail.")
    eng.generate([ids, ids[:4]], GREEDY, context_key="k")
    eng.generate([ids, ids[:4]], GREEDY, context_key="k")
    assert eng.stats.prefill_tokens_reused == 0
    assert eng.generate([ids], GREEDY, context_key="k")[0].reused_tokens == 0


def test_failed_step_does_not_poison_the_cache(model, tok):
    inner = hf_step(model)
    calls = {"n": 0, "fail_at": None}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("device lost")
        return inner(*args)

    eng = Generator(flaky, tok, context_length=256)
    fresh = Generator(hf_step(model), tok, context_length=256, prefix_cache=False)
    ids = tok.encode("Describe the image in detail.")
    eng.generate([ids], GREEDY, context_key="k")
    calls["fail_at"] = calls["n"] + 3
    with pytest.raises(RuntimeError, match="device lost"):
        eng.generate([ids + [300]], GREEDY, context_key="k")
    # The failed call's half-updated KV was dropped; only the first call's entry is kept.
    assert len(eng._cache) == 1 and not any(e.tokens[: len(ids) + 1] == ids + [300] for e in eng._cache._entries)
    [res] = eng.generate([ids + [300]], GREEDY, context_key="k")
    assert res.token_ids == fresh.generate([ids + [300]], GREEDY)[0].token_ids


def test_decode_benchmark_figures(capsys):
    """benchmarks/decode.py at toy size: same-weights check, overhead line, reuse accounting."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                          "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "2",
                          "--agent-output-tokens", "3"])
    out = capsys.readouterr().out
    assert "decode speed" in out and "prefill tokens saved by reuse" in out
    assert figures["prefill_reused"] > 0 and figures["same_outputs"] == 1.0
    assert figures["prefill_computed"] + figures["prefill_reused"] == figures["prefill_no_reuse"]
    if "overhead_median" in figures:  # ImageBindLLM importable: same weights, injection visible
        assert "injection overhead" in out
        assert figures["no_visual_max_diff"] == 0.0 and figures["injection_max_diff"] > 1e-3


def test_concurrent_callers_never_share_a_cache_and_the_engine_copies(model, tok):
    """Two callers sharing one engine (a model behind a server) with the same key: each takes its own
    KV (the entry, or a copy of its prefix) under the lock; outputs equal a fresh engine's."""
    import copy
    import threading

    eng = Generator(hf_step(model), tok, context_length=256)
    fresh = Generator(hf_step(model), tok, context_length=256, prefix_cache=False)
    ids = tok.encode("Describe the image in detail.")
    eng.generate([ids], GREEDY, context_key="k")
    prompts = [ids + tok.encode(f" Step {i} of the plan", bos=False) for i in range(4)]
    out: dict[int, list[int]] = {}

    def run(i):
        out[i] = eng.generate([prompts[i]], GREEDY, context_key="k")[0].token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert out[i] == fresh.generate([prompts[i]], GREEDY)[0].token_ids
    twin = copy.deepcopy(eng)  # the engine (with its lock) can be copied along with a model
    assert twin._cache._lock is not eng._cache._lock
    assert twin.generate([ids], GREEDY, context_key="k")[0].reused_tokens > 0
