"""generate / stream on the tiny preset: ``MultimodalLLM`` (media stage + ``ImageBindLLM``), the
``TextGenerator`` the chat model uses (the engine itself is tested in test_generation*)."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.errors import ConfigError, ContextLengthError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.multimodal import MultimodalLLM
from ibllm_agent.types import Generation, Media, Sampling, TextGenerator


def _tiny(seed: int, **overrides) -> MultimodalLLM:
    return MultimodalLLM.from_llm(ImageBindLLM.from_preset("tiny", seed=seed, **overrides))


@pytest.fixture(scope="module")
def model() -> MultimodalLLM:
    m = ImageBindLLM.from_preset("tiny", seed=7)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():  # visible gates and a confident LM head, so media change greedy outputs
        for i in m.config.layers:
            gate = m.lm.model.layers[i].self_attn.gate
            gate.copy_(torch.randn(gate.shape, generator=g) * 2)
        m.lm.lm_head.weight.mul_(20)
        # A random-init encoder maps all images to nearly one direction; amplify what differs.
        m.prefix_query.weight.mul_(0.02)
        m.bind.proj.weight.mul_(10)
    return MultimodalLLM.from_llm(m)


IMG_A = torch.zeros(3, 224, 224)
IMG_A[0] = 2.0
IMG_B = torch.linspace(-2, 2, 224).expand(3, 224, 224).clone()


def test_satisfies_text_generator_protocol(model):
    assert isinstance(model, TextGenerator)
    assert model.prompt_template == "alpaca" and model.context_length == 2048
    assert model.count_tokens("hello world") == len(model.tokenizer.encode("hello world", bos=False))


def test_stream_joins_to_generate(model):
    prompt = "Describe the image in detail."
    out = model.generate(prompt, [Media("image", IMG_A)], temperature=0, max_new_tokens=12)
    assert isinstance(out, Generation) and out.completion_tokens > 0
    deltas = list(model.stream(prompt, [Media("image", IMG_A)], sampling=Sampling(temperature=0, max_new_tokens=12)))
    assert "".join(deltas) == out.text


def test_media_changes_the_answer_and_batch_equals_single(model):
    s = Sampling(temperature=0, max_new_tokens=10)
    p1, p2 = "What is in the photo?", "Describe the sound."
    a = model.generate(p1, [Media("image", IMG_A)], sampling=s)
    b = model.generate(p1, [Media("image", IMG_B)], sampling=s)
    assert a.extras["token_ids"] != b.extras["token_ids"]  # different visual input, different greedy answer
    batch = model.generate([p1, p2], [[Media("image", IMG_A)], [Media("image", IMG_B)]], sampling=s)
    single2 = model.generate(p2, [Media("image", IMG_B)], sampling=s)
    assert [g.extras["token_ids"] for g in batch] == [a.extras["token_ids"], single2.extras["token_ids"]]


def test_prefix_reuse_is_keyed_by_visual_input(model):
    s = Sampling(temperature=0, max_new_tokens=4)
    base = "Below is an instruction. ### Instruction: describe the picture and the sound. "
    model.llm.engine.clear_cache()
    model.generate(base, [Media("image", IMG_A)], sampling=s)
    again = model.generate(base + "Thought: more", [Media("image", IMG_A)], sampling=s)
    assert again.extras["reused_tokens"] > 10  # the shared prompt prefix was not re-encoded
    other = model.generate(base + "Thought: more", [Media("image", IMG_B)], sampling=s)
    assert other.extras["reused_tokens"] == 0  # a different image never shares the cache
    fresh = _tiny(7)
    fresh.llm.load_state_dict(model.llm.state_dict())
    ref = fresh.generate(base + "Thought: more", [Media("image", IMG_A)], sampling=s)
    assert ref.extras["token_ids"] == again.extras["token_ids"]  # reuse does not change the result


def test_errors(model):
    with pytest.raises(ContextLengthError):
        model.generate("word " * (model.context_length + 100), max_new_tokens=4)
    with pytest.raises(ConfigError, match="sampling"):
        model.generate("hi", bogus=1)
    with pytest.raises(ConfigError, match="prompts"):
        model.generate(["a", "b"], [[Media("image", IMG_A)]])


def test_text_only_prompts_reuse_the_prefix_too():
    m = _tiny(7, text_only="off")
    s = Sampling(temperature=0, max_new_tokens=3)
    base = "Below is an instruction. ### Instruction: tell me a story about a dog. "
    m.generate(base, sampling=s)
    again = m.generate(base + "Observation: done", sampling=s)
    assert again.extras["reused_tokens"] > 10


def test_a_stop_string_argument_is_one_stop_string(model):
    """stop="ab" must stop on "ab", not on every "a" or "b" (a str is not a list of stop strings)."""
    s = dict(temperature=0, max_new_tokens=16)
    full = model.generate("Describe the picture.", **s)
    assert len(full.text) > 3 and full.finish_reason == "length"
    never = full.text[2] + "\u2603\u2603"  # starts with a character of the answer, never occurs whole
    out = model.generate("Describe the picture.", stop=never, **s)
    assert out.text == full.text and out.finish_reason == "length"
    cut = full.text[2:4]
    out = model.generate("Describe the picture.", stop=cut, **s)
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.find(cut)]
    with pytest.raises(ConfigError, match="stop"):
        model.generate("hi", stop=5)


def test_engine_follows_config_and_device_changes():
    m = ImageBindLLM.from_preset("tiny", seed=3, text_only="off")
    m.generate("hello there friend", temperature=0, max_new_tokens=2)
    assert m.engine.stats.calls == 1
    m.config.context_length = 6  # edited after the engine was created
    with pytest.raises(ContextLengthError, match="context length 6"):
        m.generate("hello there friend, how are you", temperature=0, max_new_tokens=2)
    m.config.context_overflow = "truncate"
    out = m.generate("hello there friend, how are you", temperature=0, max_new_tokens=2)
    assert out.extras["truncated_tokens"] > 0
    assert len(m.engine._cache) == 2  # both calls' KV are kept (different prompts, one byte budget)
    m.to("meta")  # any move: the engine builds its inputs on the new device and drops stale KV caches
    assert m.engine.device == torch.device("meta") and len(m.engine._cache) == 0


def test_bad_prompt_and_preset_overrides_are_typed():
    m = _tiny(3, text_only="off")
    with pytest.raises(ConfigError, match="prompt"):
        m.generate(None)
    with pytest.raises(ConfigError, match="bogus"):
        ImageBindLLM.from_preset("tiny", bogus=1)
    with pytest.raises(ConfigError, match="fixes the LM architecture"):
        ImageBindLLM.from_preset("tiny", lm={"hidden_size": 8})
    with pytest.raises(ConfigError, match="context_length"):
        ImageBindLLM.from_preset("tiny", context_length="long")


def test_prefix_cache_is_not_reused_after_the_weights_change():
    m = _tiny(11)
    s = Sampling(temperature=0, max_new_tokens=6)
    prompt = "Below is an instruction. ### Instruction: describe the picture in detail please. "
    img = [Media("image", IMG_B)]
    m.generate(prompt, img, sampling=s)
    assert m.generate(prompt, img, sampling=s).extras["reused_tokens"] > 10  # unchanged weights: reused
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # e.g. a training step between two generations
        for i in m.llm.config.layers:
            m.llm.lm.model.layers[i].self_attn.gate.copy_(torch.randn(1, m.llm.config.num_heads, 1, 1, generator=g) * 3)
        m.llm.lm.lm_head.weight.mul_(20)
    after = m.generate(prompt, img, sampling=s)
    assert after.extras["reused_tokens"] == 0
    fresh = _tiny(11)
    fresh.llm.load_state_dict(m.llm.state_dict())
    assert fresh.generate(prompt, img, sampling=s).extras["token_ids"] == after.extras["token_ids"]
