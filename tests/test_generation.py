"""The decoding engine against a bare tiny ``LlamaForCausalLM`` and the on-the-fly tokenizer.

Where exact text matters (stop strings, multi-byte characters, per-row EOS) the tests use a scripted
``step`` that plays back a known completion through the same step contract.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ibllm_agent.errors import ConfigError, ContextLengthError, IbllmError, PromptError, TokenizerError
from ibllm_agent.model.generation import Generator, hf_step
from ibllm_agent.model.sampling import Greedy, TemperatureTopP, build_sampler
from ibllm_agent.model.tokenizer import tiny_tokenizer
from ibllm_agent.types import Sampling

GREEDY = Sampling(max_new_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def tiny_llama(vocab: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    # Random init gives near-uniform logits; scale the head so greedy choices are not near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok.vocab_size)


@pytest.fixture
def engine(model, tok):
    return Generator(hf_step(model), tok, context_length=128)


def reference_greedy(model, prompt: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding by brute force: a full forward over the whole sequence for every token."""
    seq = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            nxt = int(logits.argmax())
            if nxt == eos:
                break
            out.append(nxt)
            seq.append(nxt)
    return out


PROMPTS = [
    "Describe the image in detail.",
    "Thought: Do I need to use a tool? Yes\nAction: Answer Question About The Image\nAction Input:",
    "Hi",
]


def test_kv_cached_greedy_matches_full_recompute(engine, model, tok):
    for text in PROMPTS:
        ids = tok.encode(text)
        [res] = engine.generate([ids], GREEDY)
        expected = reference_greedy(model, ids, GREEDY.max_new_tokens, tok.eos_id)
        assert res.token_ids == expected
        assert res.text == tok.decode(expected)
        assert res.prompt_tokens == len(ids) and res.completion_tokens == len(expected)
    assert engine.stats.prefill_tokens_computed == sum(len(tok.encode(t)) for t in PROMPTS)


def test_batch_equals_single(engine, tok):
    prompts = [tok.encode(t) for t in PROMPTS]  # lengths differ a lot: left padding matters
    assert len({len(p) for p in prompts}) == 3
    batch = engine.generate(prompts, GREEDY)
    for p, b in zip(prompts, batch):
        [single] = engine.generate([p], GREEDY)
        assert b.token_ids == single.token_ids
        assert b.text == single.text and b.finish_reason == single.finish_reason
        assert b.prompt_tokens == len(p)


def test_batch_logits_equal_single_logits(model, tok):
    """Left padding + mask + positions from the mask: each row's logits equal its solo logits."""
    seen: list[torch.Tensor] = []
    inner = hf_step(model)

    def recording(input_ids, attention_mask, position_ids, past):
        logits, past = inner(input_ids, attention_mask, position_ids, past)
        seen.append(logits[:, -1].clone())
        return logits, past

    eng = Generator(recording, tok, context_length=128)
    prompts = [tok.encode(PROMPTS[1]), tok.encode(PROMPTS[2])]
    eng.generate(prompts, Sampling(max_new_tokens=6, temperature=0))
    batch = torch.stack(seen)  # [steps, 2, V]
    for row, p in enumerate(prompts):
        seen.clear()
        eng.generate([p], Sampling(max_new_tokens=6, temperature=0))
        solo = torch.stack(seen)[:, 0]
        assert torch.isfinite(batch[: len(solo), row]).all()
        torch.testing.assert_close(batch[: len(solo), row], solo, atol=1e-5, rtol=1e-5)


def test_never_feeds_negative_pad(model, tok):
    assert tok.pad_id == -1
    inner = hf_step(model)
    fed: list[torch.Tensor] = []

    def checking(input_ids, attention_mask, position_ids, past):
        fed.append(input_ids)
        assert attention_mask.shape[1] == (0 if past is None else past.get_seq_length()) + input_ids.shape[1]
        return inner(input_ids, attention_mask, position_ids, past)

    Generator(checking, tok, context_length=128).generate([tok.encode("a b c d e f"), [1]], GREEDY)
    assert fed and all(int(t.min()) >= 0 for t in fed)


def test_streaming_joins_to_generate_with_seed(engine, tok):
    s = Sampling(max_new_tokens=40, temperature=1.0, top_p=0.9, seed=7)
    ids = tok.encode(PROMPTS[0])
    full = engine.generate([ids], s)[0]
    stream = engine.stream(ids, s)
    deltas = list(stream)
    assert len(deltas) > 3
    assert "".join(deltas) == full.text
    assert stream.result is not None and stream.result.token_ids == full.token_ids


def test_seed_determinism(engine, tok):
    ids = tok.encode(PROMPTS[0])
    s = Sampling(max_new_tokens=30, temperature=1.0, top_p=0.95, seed=123)
    a = engine.generate([ids], s)[0].token_ids
    torch.manual_seed(999)  # the global RNG must not matter
    b = engine.generate([ids], s)[0].token_ids
    c = engine.generate([ids], Sampling(max_new_tokens=30, temperature=1.0, top_p=0.95, seed=124))[0]
    assert a == b
    assert c.token_ids != a


def test_max_new_tokens_gives_length(engine, tok):
    [res] = engine.generate([tok.encode("Hi")], Sampling(max_new_tokens=5, temperature=0))
    if res.finish_reason == "length":
        assert res.completion_tokens == len(res.token_ids) == 5
    else:  # pragma: no cover - the fixture model is seeded; EOS within 5 tokens would be a surprise
        pytest.fail(f"unexpected finish {res.finish_reason}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_decodes(tok, dtype):
    m = tiny_llama(tok.vocab_size).to(dtype)
    seen = []
    inner = hf_step(m)

    def step(*args):
        logits, past = inner(*args)
        seen.append(logits.dtype)
        return logits, past

    ids = tok.encode("Describe the image in detail.")
    [res] = Generator(step, tok, context_length=64).generate([ids], GREEDY)
    assert set(seen) == {dtype}  # logits arrive in half precision; the engine samples in fp32
    # Same greedy choices as the fp32 model for the first tokens (clear winners, scaled head).
    ref = reference_greedy(tiny_llama(tok.vocab_size), ids, 3, tok.eos_id)
    assert res.token_ids[:3] == ref


# ---------------------------------------------------------------- scripted step (exact texts)


class ScriptedStep:
    """A ``step`` that plays a fixed completion per prompt, honouring the step contract.

    Its "cache" is the list of real token ids per row (pads dropped via the mask), so it can find the
    row's prompt and how many completion tokens were already produced.
    """

    def __init__(self, vocab: int, scripts: dict[tuple[int, ...], list[int]]):
        self.vocab, self.scripts = vocab, scripts

    def __call__(self, input_ids, attention_mask, position_ids, past):
        B, T = input_ids.shape
        past = [list(r) for r in past] if past is not None else [[] for _ in range(B)]
        new_mask = attention_mask[:, -T:]
        logits = torch.zeros(B, T, self.vocab)
        for r in range(B):
            past[r] += [int(t) for t, m in zip(input_ids[r], new_mask[r]) if m]
            # positions of the real tokens must count from 0 for every row
            real_pos = [int(p) for p, m in zip(position_ids[r], new_mask[r]) if m]
            assert real_pos == list(range(len(past[r]) - len(real_pos), len(past[r])))
            for prompt, completion in self.scripts.items():
                if tuple(past[r][: len(prompt)]) == prompt:
                    done = len(past[r]) - len(prompt)
                    nxt = completion[done] if done < len(completion) else 2  # then EOS
                    logits[r, -1, nxt] = 10.0
                    break
        return logits, past


def scripted(tok, pairs: list[tuple[str, str]], **kw) -> tuple[Generator, list[list[int]]]:
    scripts, prompts = {}, []
    for prompt, completion in pairs:
        ids = tok.encode(prompt)
        scripts[tuple(ids)] = tok.encode(completion, bos=False)
        prompts.append(ids)
    return Generator(ScriptedStep(tok.vocab_size, scripts), tok, context_length=256, **kw), prompts


def test_per_row_eos_in_a_batch(tok):
    eng, prompts = scripted(tok, [("Q one", "short"), ("Question two is longer", "a much longer answer here")])
    res = eng.generate(prompts, Sampling(max_new_tokens=50, temperature=0))
    assert [r.text for r in res] == ["short", "a much longer answer here"]
    assert [r.finish_reason for r in res] == ["eos", "eos"]
    assert eng.generate(prompts[:1], Sampling(max_new_tokens=50, temperature=0))[0].text == "short"


STOP_TRACE = ("Thought: Do I need to use a tool? Yes\nAction: Segment the Image\n"
              "Action Input: image/ab12cd34.png\nObservation: image/ffff.png\nThought: more")


@pytest.mark.parametrize("stop", [("\nObservation:",), ("Observation",), ("ge/ab", "\nObservation:")])
def test_stop_strings(tok, stop):
    eng, [p] = scripted(tok, [("Human: segment it", STOP_TRACE)])
    s = Sampling(max_new_tokens=100, temperature=0, stop=stop)
    res = eng.generate([p], s)[0]
    cut = min(STOP_TRACE.find(x) for x in stop if x in STOP_TRACE)
    assert res.finish_reason == "stop" and res.text == STOP_TRACE[:cut]
    assert len(tok.decode(res.token_ids)) > len(res.text)  # the stop text was generated, then cut
    deltas = list(eng.stream(p, s))
    assert "".join(deltas) == res.text
    # No delta ever shows any part of the stop text beyond what the final text holds.
    assert all(x not in "".join(deltas) for x in stop)


def test_stop_prefix_is_held_back_then_released(tok):
    # "Obs" is a prefix of the stop string: held back while it could still become "Observation:",
    # released when the text goes another way.
    eng, [p] = scripted(tok, [("Hi", "Obs ok and Observe this")])
    stream = eng.stream(p, Sampling(max_new_tokens=50, temperature=0, stop=("Observation:",)))
    shown = ""
    for d in stream:
        shown += d
        assert not shown.endswith("Obs") or shown.endswith("Obs ok")
    assert shown == "Obs ok and Observe this" and stream.result.finish_reason == "eos"


def test_multibyte_characters_stream_whole(tok):
    text = "A ✓ and ∑ in Zürich 🙂!"  # ✓ ∑ 🙂 need 3-4 byte-fallback pieces each
    eng, [p] = scripted(tok, [("Hi", text)])
    assert sum(tok.id_to_piece(i).startswith("<0x") for i in tok.encode(text, bos=False)) >= 6
    deltas = list(eng.stream(p, Sampling(max_new_tokens=80, temperature=0)))
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert eng.generate([p], Sampling(max_new_tokens=80, temperature=0))[0].text == text


def test_length_flushes_held_back_text(tok):
    completion = "one two three Observation: x"
    eng, [p] = scripted(tok, [("Hi", completion)])
    ids = tok.encode(completion, bos=False)
    # the longest token prefix whose text ends inside the stop string (e.g. "...Observation")
    n = max(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith(("Obs", "Observation")))
    s = Sampling(max_new_tokens=n, temperature=0, stop=("Observation:",))
    held = list(eng.stream(p, Sampling(max_new_tokens=n + 5, temperature=0, stop=("Observation:",))))
    assert "".join(held) == "one two three "
    res = eng.generate([p], s)[0]
    assert res.finish_reason == "length" and res.text == tok.decode(res.token_ids)
    assert res.text.endswith(("Obs", "Observation")) and "".join(eng.stream(p, s)) == res.text


# ---------------------------------------------------------------- sampling strategies


def test_top_p_follows_the_reference_rule():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    only_top = TemperatureTopP(1.0, 0.4, seed=0)
    assert {int(only_top(logits)) for _ in range(200)} == {0}  # mass before token 1 is 0.5 > 0.4
    two = TemperatureTopP(1.0, 0.6, seed=0)
    draws = two(logits.repeat(4000, 1))  # [4000]
    assert set(draws.tolist()) == {0, 1}  # token 2: mass before it is 0.8 > 0.6
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.03  # renormalised 0.625 / 0.375


def test_temperature_sharpens():
    logits = torch.log(torch.tensor([[0.4, 0.35, 0.25]])).repeat(2000, 1)
    cold = (TemperatureTopP(0.1, 1.0, seed=1)(logits) == 0).float().mean().item()
    warm = (TemperatureTopP(1.0, 1.0, seed=1)(logits) == 0).float().mean().item()
    assert cold > 0.75 and 0.35 < warm < 0.45


def test_build_sampler_and_greedy():
    assert isinstance(build_sampler(Sampling(temperature=0)), Greedy)
    s = build_sampler(Sampling(temperature=0.1, top_p=0.75, seed=3))
    assert isinstance(s, TemperatureTopP) and (s.temperature, s.top_p, s.seed) == (0.1, 0.75, 3)
    assert Greedy()(torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 0.0]])).tolist() == [1, 0]


@pytest.mark.parametrize("bad, field", [
    (Sampling(max_new_tokens=0), "max_new_tokens"),
    (Sampling(temperature=-0.5), "temperature"),
    (Sampling(temperature=float("nan")), "temperature"),
    (Sampling(top_p=0.0), "top_p"),
    (Sampling(top_p=1.5), "top_p"),
    (Sampling(stop="AI:"), "stop"),  # type: ignore[arg-type]
    (Sampling(stop=("",)), "stop"),
])
def test_bad_sampling_is_typed(engine, tok, bad, field):
    with pytest.raises(ConfigError, match=field):
        engine.generate([tok.encode("Hi")], bad)


# ---------------------------------------------------------------- context and prompt errors


def test_context_overflow_error_names_lengths(model, tok):
    eng = Generator(hf_step(model), tok, context_length=20)
    ids = tok.encode("one two three four five six seven eight nine ten eleven twelve")
    with pytest.raises(ContextLengthError, match=rf"{len(ids)} tokens.*max_new_tokens is 10.*context length 20"):
        eng.generate([ids], Sampling(max_new_tokens=10, temperature=0))
    with pytest.raises(ContextLengthError):
        eng.stream(ids, Sampling(max_new_tokens=10, temperature=0))  # raised eagerly


def test_left_truncation_keeps_bos_and_newest(model, tok):
    ids = tok.encode("one two three four five six seven eight nine ten eleven twelve")
    eng = Generator(hf_step(model), tok, context_length=20, truncate="left")
    res = eng.generate([ids], Sampling(max_new_tokens=10, temperature=0))[0]
    kept = [ids[0], *ids[len(ids) - 9 :]]
    assert res.prompt_tokens == 10 and res.truncated_tokens == len(ids) - 10
    assert res.token_ids == reference_greedy(model, kept, 10, tok.eos_id)
    with pytest.raises(ContextLengthError, match="even after truncating"):
        eng.generate([ids], Sampling(max_new_tokens=19, temperature=0))


def test_bad_prompts_are_typed(engine, tok):
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        engine.generate([tok.encode("Hi"), []], GREEDY)
    with pytest.raises(PromptError, match=r"\[9999\]"):
        engine.generate([[1, 9999]], GREEDY)
    with pytest.raises(PromptError, match="encode it first"):
        engine.generate(["Hi"], GREEDY)  # type: ignore[list-item]
    with pytest.raises(PromptError):
        engine.generate([], GREEDY)
    with pytest.raises(PromptError, match="prompt 0 is not a list of token ids.*int"):
        engine.generate(tok.encode("Hi"), GREEDY)  # a single prompt not wrapped in a list
    with pytest.raises(PromptError, match="not a list of token ids.*list"):
        engine.stream([tok.encode("Hi")], GREEDY)
    with pytest.raises(IbllmError):
        engine.stream([], GREEDY)


def test_bad_engine_settings(model, tok):
    with pytest.raises(ConfigError, match="truncate"):
        Generator(hf_step(model), tok, context_length=64, truncate="right")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="context_length"):
        Generator(hf_step(model), tok, context_length=0)


def test_model_smaller_than_tokenizer_is_typed(tok):
    small = tiny_llama(tok.vocab_size - 12)
    with pytest.raises(TokenizerError, match=f"{tok.vocab_size - 12} output logits.*{tok.vocab_size} pieces"):
        Generator(hf_step(small), tok, context_length=64).generate([tok.encode("Hi")], GREEDY)


def test_padded_model_vocab_never_samples_extra_ids(tok):
    big = tiny_llama(tok.vocab_size + 64)
    with torch.no_grad():
        big.lm_head.weight[tok.vocab_size :] = 0
        big.lm_head.bias = None
        big.model.norm.weight.fill_(1.0)
    inner = hf_step(big)

    def boosted(*args):  # make the padded ids the arg-max everywhere
        logits, past = inner(*args)
        logits[..., tok.vocab_size :] = 1e4
        return logits, past

    [res] = Generator(boosted, tok, context_length=64).generate([tok.encode("Hi")], GREEDY)
    assert res.token_ids and max(res.token_ids) < tok.vocab_size


def test_incremental_detokenizer_equals_full_decode(tok):
    """The windowed decoder reproduces decode(all ids) for arbitrary id sequences: byte pieces,
    whitespace pieces, invalid UTF-8, EOS-free random text."""
    from ibllm_agent.model.detokenizer import Detokenizer

    g = torch.Generator().manual_seed(0)
    byte_ids = [i for i in range(tok.vocab_size) if tok.id_to_piece(i).startswith("<0x")]
    samples = [torch.randint(3, tok.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(1, 60, (150,), generator=g)]
    samples += [tok.encode(t, bos=False) for t in ("A ✓ and 🙂 ∑", "  two  spaces\n\nnew", "東京 12345")]
    samples += [[byte_ids[int(i)] for i in torch.randint(0, len(byte_ids), (20,), generator=g)]]
    for ids in samples:
        d = Detokenizer(tok)
        shown = "".join(d.push(i) for i in ids) + d.flush()
        assert d.text == tok.decode(ids) == shown


def test_result_converts_to_generation(tok):
    eng, [p] = scripted(tok, [("Hi", "AI: done. Observation: x")])
    stream = eng.stream(p, Sampling(max_new_tokens=50, temperature=0, stop=(" Observation",)))
    assert "".join(stream) == "AI: done."
    gen = stream.result.to_generation()
    assert (gen.text, gen.finish_reason, gen.prompt_tokens) == ("AI: done.", "stop", len(p))
    assert gen.completion_tokens == len(gen.extras["token_ids"]) > 0 and gen.extras["reused_tokens"] == 0
