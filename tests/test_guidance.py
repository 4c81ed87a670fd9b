"""Guided decoding in the engine (``Sampling.guide``) on the tiny model: whole-option scoring over
the KV cache, token filters, batches, and the chat model's schema-valid calls from random weights."""

from __future__ import annotations

import re
from itertools import combinations
from typing import Literal

import pytest
import torch

from ibllm_agent.errors import ConfigError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.guidance import Choose, Filter, PieceTable, option_ids
from ibllm_agent.types import Sampling

PROMPT = "Below is a question. Answer it.\nQuestion: which word?\nAnswer:"
WORDS = [" river", " stone", " apple", " tower", " green", " music", " seven", " cloud", " paper", " glass"]


@pytest.fixture(scope="module")
def model() -> ImageBindLLM:
    m = ImageBindLLM.from_preset("tiny", seed=3)
    with torch.no_grad():
        m.lm.lm_head.weight.mul_(8)  # a confident head: distinct log-probabilities per option
    return m


class Once:
    """A guide that asks for ``rule`` at the start of the completion only."""

    def __init__(self, rule):
        self.rule = rule

    def constraint(self, text):
        return self.rule if text == "" else None


class Always:
    def __init__(self, rule):
        self.rule = rule

    def constraint(self, text):
        return self.rule


def _logprob(model, prompt_ids, ids):
    """log P(ids | prompt) from one uncached forward pass."""
    seq = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq, logits_to_keep=0)[0][0].float(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(ids))


def test_piece_table_texts_join_to_the_decoded_text(model):
    tok = model.tokenizer
    ids = tok.encode("Action: get_weather\nAction Input: paris, 3", bos=False)
    pieces = PieceTable(tok)
    assert "".join(pieces.text(i) for i in ids).lstrip() == tok.decode(ids)
    assert pieces.text(tok.eos_id) == "" and pieces.find(",") is not None


def test_choose_scores_whole_options_not_first_tokens(model):
    tok = model.tokenizer
    prompt_ids = tok.encode(PROMPT, bos=True)
    opts = {w: option_ids(tok, "", w) for w in WORDS}
    whole = {w: _logprob(model, prompt_ids, ids) for w, ids in opts.items()}
    first = {w: _logprob(model, prompt_ids, ids[:1]) for w, ids in opts.items()}
    # a pair whose first tokens prefer one word and whose whole spellings prefer the other
    pair = next((a, b) for a, b in combinations(WORDS, 2)
                if len(opts[a]) > 1 and len(opts[b]) > 1 and (first[a] > first[b]) != (whole[a] > whole[b]))
    best = max(pair, key=whole.get)
    out = model.generate(PROMPT, sampling=Sampling(temperature=0, max_new_tokens=6, guide=Once(Choose("", pair))))
    assert out.extras["token_ids"][: len(opts[best])] == opts[best]


def test_after_a_choice_decoding_goes_on_as_if_the_option_were_prompted(model):
    """The scoring passes are cropped off the cache: what follows the forced option is exactly the
    free continuation of prompt + option (same tokens, greedy)."""
    tok = model.tokenizer
    opts = (" river", " stone", " apple")
    guided = model.generate(PROMPT, sampling=Sampling(temperature=0, max_new_tokens=12, guide=Once(Choose("", opts))))
    ids = guided.extras["token_ids"]
    chosen = next(o for o in opts if ids[: len(option_ids(tok, "", o))] == option_ids(tok, "", o))
    n = len(option_ids(tok, "", chosen))
    prompt_ids = tok.encode(PROMPT, bos=True) + ids[:n]
    free = model.engine.generate([prompt_ids], Sampling(temperature=0, max_new_tokens=12 - n))[0]
    assert ids[n:] == free.token_ids
    # the prefix cache kept by the guided call is consistent: the same call again, reusing it, agrees
    again = model.generate(PROMPT, sampling=Sampling(temperature=0, max_new_tokens=12, guide=Once(Choose("", opts))))
    assert again.extras["token_ids"] == ids and again.extras["reused_tokens"] > 0


def test_filter_keeps_to_viable_text_and_holds_eos(model):
    digits = Filter(lambda t: re.fullmatch(r" ?\d*", t) is not None, end_ok=False)
    out = model.generate(PROMPT, sampling=Sampling(temperature=0, max_new_tokens=8, guide=Always(digits)))
    assert out.text.strip().isdigit() and out.finish_reason == "length"
    sampled = model.generate(PROMPT, sampling=Sampling(temperature=1.0, top_p=1.0, seed=1, max_new_tokens=8,
                                                       guide=Always(digits)))
    assert sampled.text.strip().isdigit()


def test_filter_takes_the_separator_when_the_model_would_end_too_early(model):
    """The model's favourite is EOS, which the rule forbids; its likeliest viable token is a letter,
    and "," is the least likely of all: only the separator swap can produce the comma."""
    tok = model.tokenizer
    pieces = PieceTable(tok)
    comma = pieces.find(",")
    rule = Filter(lambda t: re.fullmatch(r"[ ,a-z]*", t) is not None, end_ok=False, instead_of_end=",")
    prompt_ids = tok.encode(PROMPT, bos=True)
    step = model._step_for(None)

    def eos_step(ids, mask, pos, cache, logits_to_keep=1):
        logits, cache = step(ids, mask, pos, cache, logits_to_keep)
        logits = logits.clone()
        logits[..., tok.eos_id] = 1e4
        logits[..., comma] = -1e4
        return logits, cache

    def run(instead):
        guide = Once(Filter(rule.viable, end_ok=False, instead_of_end=instead))
        return model.engine.generate([prompt_ids], Sampling(temperature=0, max_new_tokens=3, guide=guide),
                                     step=eos_step)[0]

    swapped, plain = run(","), run(None)
    assert swapped.token_ids[0] == comma and swapped.finish_reason == "eos"
    assert plain.token_ids[0] != comma and re.fullmatch(r"[ ,a-z]+", pieces.text(plain.token_ids[0]))


def test_batch_rows_keep_their_own_guides(model):
    s = Sampling(temperature=0, max_new_tokens=8)
    digits = Always(Filter(lambda t: re.fullmatch(r" ?\d*", t) is not None, end_ok=False))
    prompts = [PROMPT, "Tell me a story."]
    batch = model.generate(prompts, sampling=Sampling(temperature=0, max_new_tokens=8, guide=[digits, None]))
    assert batch[0].text == model.generate(PROMPT, sampling=Sampling(temperature=0, max_new_tokens=8,
                                                                     guide=digits)).text
    assert batch[1].text == model.generate(prompts[1], sampling=s).text


def test_bad_guides_fail_before_decoding(model):
    with pytest.raises(ConfigError, match="2 guides for a batch of 1"):
        model.generate(PROMPT, sampling=Sampling(guide=[None, None]))
    with pytest.raises(ConfigError, match="Sampling.guide"):
        model.generate(PROMPT, sampling=Sampling(guide="digits"))


# -- the chat model ------------------------------------------------------------------------------------
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


def scale(x: float, unit: Literal["cm", "inch"]) -> str:
    """Scale a length."""
    return f"{x} {unit}"


@pytest.mark.parametrize("choice", ["any", "magic_function", "scale"])
def test_random_tiny_model_makes_schema_valid_calls_when_guided(choice):
    """Random weights, yet every forced call names a bound tool and its arguments fit the schema:
    the grammar, not luck (unguided, the same model's calls do not parse)."""
    from ibllm_agent.chat import ChatImageBindLLM

    llm = ChatImageBindLLM(preset="tiny", max_new_tokens=48, temperature=0, seed=0)
    bound = llm.bind_tools([magic_function, scale], tool_choice=choice)
    msg = bound.invoke("Hello!")
    assert not msg.invalid_tool_calls and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    if choice != "any":
        assert call["name"] == choice
    if call["name"] == "magic_function":
        assert isinstance(call["args"]["input"], int)
    else:
        assert isinstance(call["args"]["x"], float) and call["args"]["unit"] in ("cm", "inch")
    free = bound.invoke("Hello!", guided=False)
    assert free.invalid_tool_calls or not free.tool_calls
