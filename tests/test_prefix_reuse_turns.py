"""Prefill reuse across the turns of a conversation: several KV entries under a byte budget (LRU),
identical outputs with and without reuse, never across a change of weights, media or history."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ibllm_agent.model.generation import Generator, hf_step
from ibllm_agent.model.prefix_cache import PrefixCache, kv_bytes
from ibllm_agent.model.tokenizer import tiny_tokenizer
from ibllm_agent.types import Sampling

GREEDY = Sampling(max_new_tokens=8, temperature=0.0)
SYSTEM = ("GPT4Tools can handle various text and visual tasks. Tools: Image Captioning, Edge Detection, "
          "Segment the Image, Remove Something From The Photo. Use the format: Thought, Action, "
          "Action Input, Observation.\n")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(3)
    m = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=None)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30.0)
    return m


def conversation(tok, eng: Generator, key, history_edit: str | None = None):
    """3 turns (2 with a tool step): each prompt = system + history + new input + scratchpad, the
    history holding the earlier exchanges. Returns per model step (token ids, reused tokens)."""
    turns = [("What is in image/ab12cd34.png?", True), ("Find the edges of it", True), ("Thanks!", False)]
    history, steps = "", []
    for n, (text, tool) in enumerate(turns):
        prompt = f"{SYSTEM}History:\n{history}New input: {text}\nThought:"
        ids = tok.encode(prompt)
        [res] = eng.generate([ids], GREEDY, context_key=key)
        steps.append((res.token_ids, res.reused_tokens))
        if tool:  # an observation, then the answer step extends the same prompt
            ids = ids + res.token_ids + tok.encode(f"\nObservation: image/{n}e{n}f.png\nThought:", bos=False)
            [res] = eng.generate([ids], GREEDY, context_key=key)
            steps.append((res.token_ids, res.reused_tokens))
        answer = tok.decode(res.token_ids).strip().replace("\n", " ")
        history += f"Human: {text}\nAI: {answer}\n"
        if history_edit is not None and n == 1:
            history = history_edit + history  # an edited (e.g. summarised) history before turn 3
    return steps


def test_three_turns_reuse_across_turns_with_identical_outputs(model, tok):
    eng = Generator(hf_step(model), tok, context_length=1024)
    fresh = Generator(hf_step(model), tok, context_length=1024, prefix_cache=False)
    with_reuse = conversation(tok, eng, ("image-A", "weights-1"))
    without = conversation(tok, fresh, ("image-A", "weights-1"))
    assert [s[0] for s in with_reuse] == [s[0] for s in without]
    system = len(tok.encode(f"{SYSTEM}History:\n"))
    first_steps = [with_reuse[0], with_reuse[2], with_reuse[4]]  # the first step of each turn
    assert first_steps[0][1] == 0
    # Turns 2 and 3 reuse at least the system prompt and every earlier exchange of the history.
    assert first_steps[1][1] >= system and first_steps[2][1] > first_steps[1][1]
    # Tool steps reuse their whole prompt but the observation.
    assert with_reuse[1][1] > first_steps[0][1] and with_reuse[3][1] > first_steps[1][1]
    saved = eng.stats.prefill_tokens_reused / (eng.stats.prefill_tokens_reused + eng.stats.prefill_tokens_computed)
    assert saved > 0.5 and fresh.stats.prefill_tokens_reused == 0


def test_weights_media_or_history_change_is_never_reused(model, tok):
    eng = Generator(hf_step(model), tok, context_length=1024)
    conversation(tok, eng, ("image-A", "weights-1"))
    # Another image or newer weights: another key, nothing reused, although the tokens match.
    first = tok.encode(f"{SYSTEM}History:\nNew input: What is in image/ab12cd34.png?\nThought:")
    assert eng.generate([first], GREEDY, context_key=("image-A", "weights-1"))[0].reused_tokens == len(first) - 1
    assert eng.generate([first], GREEDY, context_key=("image-B", "weights-1"))[0].reused_tokens == 0
    assert eng.generate([first], GREEDY, context_key=("image-A", "weights-2"))[0].reused_tokens == 0
    # An edited history: turn 3 reuses only the part before the edit, and its outputs stay exact.
    fresh = Generator(hf_step(model), tok, context_length=1024, prefix_cache=False)
    eng2 = Generator(hf_step(model), tok, context_length=1024)
    edited = conversation(tok, eng2, ("k",), history_edit="(summary of earlier turns)\n")
    assert [s[0] for s in edited] == [s[0] for s in conversation(tok, fresh, ("k",), history_edit="(summary of earlier turns)\n")]
    assert edited[4][1] <= len(tok.encode(f"{SYSTEM}History:\n")) + 1


def test_imagebind_llm_reuses_across_turns_but_not_after_a_weight_or_media_change():
    """The model's key: a hash of the visual input and a stamp of the weights' versions."""
    from ibllm_agent.model import ImageBindLLM

    m = ImageBindLLM.from_preset("tiny", seed=5)
    with torch.no_grad():  # visible gates, so the visual input changes the KV
        for i in m.config.layers:
            m.lm.model.layers[i].self_attn.gate.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(1, m.config.visual_dim, generator=g), torch.randn(1, m.config.visual_dim, generator=g)
    turn1 = SYSTEM + "Human: what is in the picture?\nAI:"
    turn2 = SYSTEM + "Human: what is in the picture?\nAI: a cat\nHuman: and its colour?\nAI:"

    def run(prompt, feats):
        return m.generate(prompt, feats, temperature=0, max_new_tokens=4)

    run(turn1, fa)
    second = run(turn2, fa)
    assert second.extras["reused_tokens"] >= len(m.tokenizer.encode(turn1, bos=True)) - 2
    m.engine.prefix_cache = False  # the reused prefix gives exactly what a full prefill gives
    assert run(turn2, fa).extras["token_ids"] == second.extras["token_ids"]
    m.engine.prefix_cache = True
    assert run(turn2, fb).extras["reused_tokens"] == 0  # other media
    with torch.no_grad():
        m.lm.lm_head.weight.mul_(1.5)  # in place, as an optimizer step: the stamp changes
    after = run(turn2, fa)
    assert after.extras["reused_tokens"] == 0
    m.engine.prefix_cache = False  # the same call without reuse gives the same tokens
    m.engine.clear_cache()
    assert run(turn2, fa).extras["token_ids"] == after.extras["token_ids"]


def test_byte_budget_lru_and_partial_matches_copy(model, tok):
    step = hf_step(model)
    probe = Generator(step, tok, context_length=512)
    # Each thread's own part is longer than the shared system prompt: reusing that prefix for another
    # thread copies it (cropping would throw away most of the entry).
    a = tok.encode(SYSTEM + "Human: thread A asks about a cat on the sofa in the living room. " * 4)
    probe.generate([a], GREEDY, context_key="k")
    per_entry = probe._cache.stats.bytes
    assert per_entry == kv_bytes(probe._cache._entries[0].past) > 0

    # Room for two entries: a third evicts the least recently used.
    eng = Generator(step, tok, context_length=512, max_prefix_bytes=int(2.5 * per_entry))
    b = tok.encode(SYSTEM + "Human: thread B asks about a dog on the beach near the sea today. " * 4)
    c = tok.encode(SYSTEM + "Human: thread C asks about a car parked in front of the house now. " * 4)
    for ids in (a, b):
        eng.generate([ids], GREEDY, context_key="k")
    # Thread C shares only the system prompt with B: the prefix is copied, B's entry survives.
    res_c = eng.generate([c], GREEDY, context_key="k")[0]
    assert 0 < res_c.reused_tokens < len(c) // 2 and eng._cache.stats.copies == 2  # (B copied A's too)
    assert eng._cache.stats.bytes <= 2.5 * per_entry and eng._cache.stats.evictions >= 1
    # A (least recently used) was evicted; B and C continue where they were.
    assert eng.generate([b + [5]], GREEDY, context_key="k")[0].reused_tokens == len(b)
    assert eng.generate([c + [5]], GREEDY, context_key="k")[0].reused_tokens == len(c)
    # An entry larger than the whole budget is not kept.
    tiny = PrefixCache(max_bytes=per_entry // 2)
    tiny.put("k", a, probe._cache._entries[0].past)
    assert len(tiny) == 0
