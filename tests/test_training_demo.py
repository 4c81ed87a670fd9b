"""The demo model's recipe pieces: LangChain-shaped generic calls, the prompt/response rendering (it
must equal what the chat model sends), the word-piece tokenizer, and the from-scratch LM stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ibllm_agent.prompts import format_prompt
from ibllm_agent.training.calls import GENERATORS, byte_level, generate_calls
from ibllm_agent.training.demo import DemoRecipe, build_model, tool_pair, train_tokenizer
from ibllm_agent.training.lm import (
    LMStageConfig,
    encode_pairs,
    first_layers,
    identity_layers,
    lr_at,
    repeat_rows,
    train_lm,
)
from langchain_core.tools import tool

from ibllm_agent import protocol as P
from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.errors import ConfigError
from ibllm_agent.testing import ScriptedGenerator

# Names and wordings of LangChain's standard integration tests: the generic data must not contain them.
SUITE_WORDS = ["magic_function", "get_weather", "unicode_customer", "Joke", "punchline", "customer_name",
               "What is the value of", "Tell me a joke", "San Francisco", "你好啊集团", "こんにちは"]


@pytest.fixture(scope="module")
def calls():
    return generate_calls(200, seed=0)


def test_calls_are_deterministic_and_cover_every_shape(calls):
    assert calls == generate_calls(200, seed=0)
    assert calls != generate_calls(200, seed=1)
    assert {c["kind"] for c in calls} == set(GENERATORS)
    assert any(c["prefill"] for c in calls) and any(not c["prefill"] for c in calls)


def test_calls_never_use_the_standard_suite_names(calls):
    text = json.dumps(calls, ensure_ascii=False)
    for word in SUITE_WORDS:
        assert word not in text, word


def _tools_of(prompt: str) -> dict[str, P.ToolSpec]:
    """Tool specs back from the prompt's tool lines (name → parameters stated in the line)."""
    out = {}
    for line in prompt.split("\n"):
        if line.startswith("> "):
            name = line[2:].split(":", 1)[0]
            out[name] = line
    return out


def test_every_call_sample_parses_to_a_schema_valid_step(calls):
    for c in calls:
        step = P.parse_step(P.join_prefill(c["prefill"], c["output"]))
        shown = _tools_of(c["prompt"])
        if step.kind == "final":
            assert c["output"].startswith(P.THOUGHT_NO) and step.answer
            continue
        assert step.kind == "action", c
        assert step.action in shown and step.action in c["tools"]
        line = shown[step.action]
        # As many comma-separated values as the tool line says it takes (one parameter: the whole input).
        if "comma separated string of two" in line:
            assert len(step.action_input.split(",")) >= 2
        if "should be an integer" in line:
            int(step.action_input)
    uni = [c for c in calls if c["kind"] == "unicode" and not c["output"].startswith(P.THOUGHT_NO)]
    names = [P.parse_step(P.join_prefill(c["prefill"], c["output"])).action_input.split(",")[0] for c in uni]
    for c, name in zip(uni, names):
        assert name and name in c["prompt"] and not name.isascii()
    # names in the tokenizer's alphabets and names it spells in byte pieces (random CJK / kana / Hangul)
    assert any(byte_level(n) for n in names) and any(not byte_level(n) for n in names)


def test_training_prompt_is_what_the_chat_model_sends():
    @tool
    def brim_tally(level: int) -> int:
        """Tally the brim of a level."""
        return level

    @tool
    def pollen_at(town: str) -> str:
        """Get the pollen count at a town."""
        return "low"

    for choice in (None, "any", "brim_tally"):
        gen = ScriptedGenerator([f"{P.THOUGHT_NO}\nAI: ok", "3"], prompt_template="alpaca", repeat_last=True)
        chat = ChatImageBindLLM(model=gen)
        chat.bind_tools([brim_tally, pollen_at], tool_choice=choice).invoke("Compute brim_tally(3).")
        sent = gen.calls[0][0]
        specs = [P.tool_spec(t) for t in chat.bind_tools([brim_tally, pollen_at]).kwargs["tools"]]
        shown = P.select_tools(specs, "Compute brim_tally(3).", 5)
        prompt = P.render_prompt(shown, "Compute brim_tally(3).")
        prefill = P.prefill_for(choice, shown) if choice else ""
        assert tool_pair(prompt, "x", prefill)[0] == sent
        assert sent.startswith(format_prompt(prompt, None, "alpaca"))


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory, calls):
    pairs = [tool_pair(c["prompt"], c["output"], c["prefill"]) for c in calls]
    return train_tokenizer(pairs, tmp_path_factory.mktemp("tok") / "t.model", 2048), pairs


def test_tokenizer_round_trips_and_compresses_the_fixed_prompt(small_tokenizer):
    tok, pairs = small_tokenizer
    for prompt, response in pairs[:50]:
        text = prompt + response
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("Создай «東京» 🙂")) == "Создай «東京» 🙂"  # byte fallback
    prompt = pairs[0][0]
    # The fixed GPT4Tools blocks become multi-word pieces: far fewer tokens than words.
    assert len(tok.encode(prompt)) < 0.6 * len(prompt.split())
    # No dummy prefix: a prompt tokenises the same whether or not text follows it after a newline.
    assert tok.encode("Thought", bos=False) == tok.encode("\nThought", bos=False)[1:]


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_tokenizer_keeps_copied_values_alike(small_tokenizer):
    """Every value the answer copies from the request (the tool from the list, the arguments) is the
    same run of tokens in the answer as in the prompt: the model can learn to copy tokens. Multi-word
    pieces merged a value with its neighbours differently in the two places."""
    import re

    tok, pairs = small_tokenizer
    values = 0
    for prompt, response in pairs:
        m = re.search(r"Action: (\S+)\nAction Input: (.*)\n", response)
        if not m or "Previous conversation:\n\nHuman" in prompt:
            continue
        for value in [m.group(1)] + [v for v in m.group(2).split(", ") if f" {v}" in prompt.split("New input:")[1]]:
            # the value as it is tokenised inside the response, after its space
            start = response.index(f" {value}", response.index("Action"))
            part = tok.encode(f" {value}", bos=False)
            assert _contains(tok.encode(response[:start + 1 + len(value)], bos=False), part), value
            assert _contains(tok.encode(prompt), part), (value, prompt[-200:])
            values += 1
    assert values > 50


def test_a_word_is_the_same_tokens_after_a_space_and_inside_a_name(small_tokenizer):
    """The space is a piece of its own, so an invented function's noun in a request (``the gurite``)
    is the run of tokens that its name (``count_gurite``) and the answer hold."""
    tok, _ = small_tokenizer
    space = tok.encode(" ", bos=False)
    for word in ("gurite", "temuka", "lanzosol", "tokyo"):
        after_space = tok.encode(f"count the {word}", bos=False)
        in_name = tok.encode(f"count_{word}", bos=False)
        word_ids = tok.encode(word, bos=False)
        assert after_space[-len(word_ids) - len(space):] == space + word_ids
        assert in_name[-len(word_ids):] == word_ids


def test_shown_tool_descriptions_become_single_pieces(tmp_path: Path, calls):
    from ibllm_agent.tools.catalog import RUNTIME_DESCRIPTIONS
    from ibllm_agent.training.demo import description_pieces

    edge = RUNTIME_DESCRIPTIONS["Edge Detection On Image"]
    pairs = [tool_pair(c["prompt"], c["output"], c["prefill"]) for c in calls[:80]]
    pairs.append((format_prompt(f"TOOLS:\n> Edge Detection On Image: {edge}\n\nFind the edges.", None, "alpaca"),
                  " Thought: Do I need to use a tool? Yes"))
    pieces = description_pieces(pairs)
    assert pieces == [edge.replace(" ", "▁")]  # only what the prompts show: held-out tools stay words
    tok = train_tokenizer(pairs, tmp_path / "t.model", 700, pieces=pieces)
    assert len(tok.encode(edge, bos=False)) == 1
    assert tok.decode(tok.encode(pairs[-1][0])) == pairs[-1][0]


def test_fixed_template_lines_are_single_pieces(small_tokenizer):
    from ibllm_agent.training.demo import fixed_pieces

    tok, _ = small_tokenizer
    pieces = fixed_pieces()
    assert any(p.startswith("GPT4Tools▁needs▁to▁use▁tools") for p in pieces)
    for piece in pieces[:10]:
        assert len(tok.encode(piece.replace("▁", " "), bos=False)) == 1, piece


def _copy_accuracy(lm, ids: torch.Tensor, weights: torch.Tensor) -> float:
    with torch.no_grad():
        pred = lm(input_ids=ids).logits[:, :-1].argmax(-1)
    hit = (pred == ids[:, 1:]).float() * weights[:, 1:]
    return (hit.sum() / weights[:, 1:].sum()).item()


def test_induction_init_copies_before_any_training(small_tokenizer):
    """The structured initialisation is a working induction circuit: on rows of random tokens whose
    segments repeat, it predicts most repeated tokens before a single step; the same model with the
    default initialisation predicts none."""
    from dataclasses import replace

    tok, _ = small_tokenizer
    recipe = DemoRecipe(hidden=128, layers=3, heads=4, intermediate=256, context_length=512)
    ids, w = repeat_rows(8, 160, 300, tok.vocab_size, torch.Generator().manual_seed(3), max_gap=4)
    model = build_model(tok, recipe)
    assert _copy_accuracy(model.lm, ids, w) > 0.6
    assert _copy_accuracy(build_model(tok, replace(recipe, induction_init=False)).lm, ids, w) < 0.05
    # The rest keeps its random init by default, or starts as zero branches (then the stream holds
    # exactly the circuit; copying is unchanged).
    assert model.lm.model.layers[2].self_attn.o_proj.weight.any()
    zero = build_model(tok, replace(recipe, induction_zero_rest=True))
    top = zero.lm.model.layers[2]
    assert not top.self_attn.o_proj.weight.any() and not top.mlp.down_proj.weight.any()
    assert _copy_accuracy(zero.lm, ids, w) > 0.6
    # A different seed writes different codes: the circuit, not one set of numbers, does the copying.
    other = build_model(tok, replace(recipe, seed=1))
    assert not torch.equal(other.lm.model.embed_tokens.weight, model.lm.model.embed_tokens.weight)
    assert _copy_accuracy(other.lm, ids, w) > 0.6


def test_induction_init_needs_slow_rotary_pairs(small_tokenizer):
    tok, _ = small_tokenizer
    with pytest.raises(ConfigError, match="rope_theta"):
        build_model(tok, DemoRecipe(hidden=128, layers=2, heads=4, intermediate=256, rope_theta=1e4))


def test_lr_schedule_warms_up_then_decays():
    cfg = LMStageConfig(steps=100, warmup=10, lr=1e-2, min_lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(9, cfg) == pytest.approx(1e-2)
    assert lr_at(99, cfg) == pytest.approx(1e-3, rel=1e-2)
    assert lr_at(50, cfg) < lr_at(20, cfg)
    timed = LMStageConfig(steps=10_000, warmup=10, lr=1e-2, min_lr=1e-3, time_budget_s=60.0)
    assert lr_at(20, timed, elapsed_s=60.0) == pytest.approx(1e-3)  # the clock ends the schedule
    assert lr_at(20, timed, elapsed_s=30.0) == pytest.approx(5.5e-3, rel=1e-2)


def test_encode_pairs_marks_the_prompt_and_drops_long_pairs(small_tokenizer):
    tok, _ = small_tokenizer
    ex = encode_pairs(tok, [("### Response:", " Thought: yes"), ("x " * 400, "y")], max_len=64)
    assert len(ex) == 1
    (e,) = ex
    assert e.ids[0] == tok.bos_id and e.ids[-1] == tok.eos_id
    assert tok.decode(e.ids[1 : e.n_prompt]) == "### Response:"
    assert tok.decode(e.ids[e.n_prompt :]) == " Thought: yes"


@pytest.mark.slow  # ~10 s on an idle core, 30+ s on a shared one
def test_lm_stage_trains_a_model_that_answers_after_the_rendered_prompt(small_tokenizer):
    """Two pairs memorised from scratch: greedy decoding after each prompt gives its response, so the
    tokenisation at training time is the one generation continues from."""
    tok, _ = small_tokenizer
    pairs = [tool_pair("Use frob on 12.", "Action: frob_tal\nAction Input: 12"),
             tool_pair("Hello there.", "Thought: Do I need to use a tool? No\nAI: Hi!")]
    recipe = DemoRecipe(hidden=64, layers=2, heads=2, intermediate=128, context_length=256)
    model = build_model(tok, recipe)
    before = [p.detach().clone() for p in model.bind.parameters()]
    stats = train_lm(model, encode_pairs(tok, pairs, 256),
                     LMStageConfig(steps=120, batch_tokens=512, lr=1e-2, min_lr=1e-3, warmup=5, seed=0), log=None)
    assert stats["steps"] == 120 and stats["response_loss"] < 0.1
    assert model.config.phase == "inference" and not model.training
    for (prompt, response) in pairs:
        out = model.generate(prompt, sampling=_greedy(32)).text
        assert out.strip() == response.strip()
    # The stage trains the LM only: the bind network is untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, model.bind.parameters()))


@pytest.mark.slow  # ~40 s: two spawned processes import the stack and train
def test_two_processes_train_the_callers_model_in_place(small_tokenizer):
    """``processes=2``: rank 0 trains the caller's tensors through shared memory (the pairs are answered
    by the model object passed in), the other rank a copy DDP keeps equal, and the figures count both."""
    tok, _ = small_tokenizer
    pairs = [tool_pair("Use frob on 12.", "Action: frob_tal\nAction Input: 12"),
             tool_pair("Hello there.", "Thought: Do I need to use a tool? No\nAI: Hi!")]
    model = build_model(tok, DemoRecipe(hidden=64, layers=2, heads=2, intermediate=128, context_length=256))
    before = model.lm.lm_head.weight.detach().clone()
    cfg = LMStageConfig(steps=150, batch_tokens=512, lr=1e-2, min_lr=1e-3, warmup=5, seed=0, processes=2)
    stats = train_lm(model, encode_pairs(tok, pairs, 256), cfg, log=None)
    assert stats["steps"] == 150 and stats["processes"] == 2 and stats["replicas_equal"]
    assert stats["response_loss"] < 0.1 and not torch.equal(before, model.lm.lm_head.weight)
    assert model.config.phase == "inference"
    for prompt, response in pairs:
        assert model.generate(prompt, sampling=_greedy(32)).text.strip() == response.strip()
    with pytest.raises(ConfigError, match="one process"):
        train_lm(model, encode_pairs(tok, pairs, 256), LMStageConfig(steps=1, copy_steps=5, processes=2), log=None)


@pytest.mark.slow  # ~1 min: one Inductor compilation of the small model
def test_compiled_steps_train_and_leave_the_plain_module(small_tokenizer, tmp_path: Path):
    tok, _ = small_tokenizer
    pairs = [tool_pair("Use frob on 12.", "Action: frob_tal\nAction Input: 12")]
    model = build_model(tok, DemoRecipe(hidden=64, layers=2, heads=2, intermediate=128, context_length=256))
    lm = model.lm
    stats = train_lm(model, encode_pairs(tok, pairs, 256),
                     LMStageConfig(steps=60, batch_tokens=256, lr=1e-2, warmup=5, compile=True), log=None)
    assert model.lm is lm and stats["response_loss"] < 0.5
    model.save_pretrained(tmp_path / "m")  # the checkpoint keys are the plain module's
    assert not any("_orig_mod" in k for k in model.lm.state_dict())


def test_repeat_rows_are_predictable_only_by_copying():
    """Every weighted token is the successor of an earlier occurrence of the token before it (what an
    induction head reads), the first token of a repeat is never weighted, and offsets vary."""
    ids, w = repeat_rows(64, 96, 10, 500, torch.Generator().manual_seed(0))
    again, _ = repeat_rows(64, 96, 10, 500, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again) and ids.shape == w.shape == (64, 96)
    assert int(ids.min()) >= 10 and int(ids.max()) < 500
    offsets = set()
    for row in range(64):
        hits = w[row].nonzero().flatten().tolist()
        assert hits, "every row has repeats"
        for j in hits:
            earlier = [i for i in range(j - 1) if ids[row, i] == ids[row, j - 1] and ids[row, i + 1] == ids[row, j]]
            assert earlier, (row, j)
            offsets.add(j - earlier[-1])
        assert w[row, 0] == 0 and len(hits) < 96 // 2  # a repeat's first token is never weighted
    assert len(offsets) > 10  # no single period a positional shortcut could learn


def test_grown_layers_start_as_identities(small_tokenizer):
    """``identity_layers(lm, k)`` makes the whole model compute what its first k layers compute."""
    tok, _ = small_tokenizer
    model = build_model(tok, DemoRecipe(hidden=64, layers=3, heads=2, intermediate=128, context_length=256))
    ids = torch.randint(4, tok.vocab_size, (2, 20))
    with torch.no_grad(), first_layers(model.lm, 1):
        shallow, _ = model(ids)
    assert len(model.lm.model.layers) == 3  # restored
    with torch.no_grad():
        before, _ = model(ids)
    assert not torch.allclose(before, shallow, atol=1e-4)
    identity_layers(model.lm, 1)
    with torch.no_grad():
        after, _ = model(ids)
    torch.testing.assert_close(after, shallow)


def test_copy_warm_up_trains_the_first_layers_then_grows(small_tokenizer):
    """The warm-up updates the first ``copy_layers`` only, stops at ``copy_target``, and the layers
    above enter the pair steps as identities (then train: their output projections leave zero)."""
    tok, _ = small_tokenizer
    model = build_model(tok, DemoRecipe(hidden=64, layers=3, heads=2, intermediate=128, context_length=256))
    top = [p.detach().clone() for n, p in model.lm.model.layers[2].named_parameters()
           if "o_proj" not in n and "down_proj" not in n]
    low = model.lm.model.layers[0].self_attn.q_proj.weight.detach().clone()
    pairs = [tool_pair("Use frob on 12.", "Action: frob_tal\nAction Input: 12")]
    cfg = LMStageConfig(steps=0, batch_tokens=512, lr=1e-2, warmup=1, copy_steps=3, copy_layers=2,
                        copy_len=32, copy_batch=4)
    stats = train_lm(model, encode_pairs(tok, pairs, 256), cfg, log=None)
    assert stats["copy_steps"] == 3 and 0.0 <= stats["copy_accuracy"] <= 1.0
    assert not torch.equal(low, model.lm.model.layers[0].self_attn.q_proj.weight)
    rest = [p for n, p in model.lm.model.layers[2].named_parameters() if "o_proj" not in n and "down_proj" not in n]
    assert all(torch.equal(a, b) for a, b in zip(top, rest))
    assert not model.lm.model.layers[2].self_attn.o_proj.weight.any()
    assert not model.lm.model.layers[1].self_attn.o_proj.weight.eq(0).all()
    # A reached target ends the warm-up at once; the pair steps then run with copy rows beside them.
    model = build_model(tok, DemoRecipe(hidden=64, layers=3, heads=2, intermediate=128, context_length=256))
    cfg = LMStageConfig(steps=2, batch_tokens=512, lr=1e-2, warmup=1, copy_steps=50, copy_target=0.0,
                        copy_layers=2, copy_rows=2, copy_len=32, copy_batch=4)
    stats = train_lm(model, encode_pairs(tok, pairs, 256), cfg, log=None)
    assert stats["copy_steps"] == 1 and stats["steps"] == 2
    assert model.lm.model.layers[2].self_attn.o_proj.weight.any()


def test_recipe_budget_spent_before_the_lm_stage_is_a_config_error(tmp_path):
    from ibllm_agent.training.demo import run

    from ibllm_agent.errors import ConfigError

    recipe = DemoRecipe(vocab_size=1024, call_episodes=20, copy_pairs=20, budget_s=1.0,
                        synthetic={"n_train": 20, "n_val": 2, "n_test": 2, "n_chat": 5, "media_train": 1,
                                   "media_eval": 1})
    with pytest.raises(ConfigError, match="spent before the LM stage"):
        run(tmp_path / "model", recipe, work=tmp_path / "work", log=lambda m: None)
    assert not (tmp_path / "model").exists()


def _greedy(n):
    from ibllm_agent.types import Sampling

    return Sampling(max_new_tokens=n, temperature=0.0)


def test_saved_model_reloads_with_its_tokenizer(small_tokenizer, tmp_path: Path):
    from ibllm_agent.model import ImageBindLLM

    tok, _ = small_tokenizer
    model = build_model(tok, DemoRecipe(hidden=32, layers=1, heads=2, intermediate=64, context_length=128,
                                         induction_init=False))
    model.save_pretrained(tmp_path / "m")
    again = ImageBindLLM.from_pretrained(tmp_path / "m", device="cpu")
    assert again.config.prompt_template == "alpaca" and again.config.lora_rank == 0
    assert again.tokenizer.encode("Action: x") == tok.encode("Action: x")
    ids = torch.tensor([tok.encode("Thought: hi")])
    assert torch.allclose(model(ids)[0], again(ids)[0])


@pytest.mark.slow  # ~2 min: the whole recipe, scaled down (data, model, budget)
def test_recipe_retrains_a_smaller_variant(tmp_path):
    from ibllm_agent.training.demo import run

    from ibllm_agent.model import ImageBindLLM

    recipe = DemoRecipe(vocab_size=1024, hidden=64, layers=2, heads=2, intermediate=160, call_episodes=70,
                        synthetic={"n_train": 80, "n_val": 12, "n_test": 12, "n_chat": 20, "media_train": 4,
                                   "media_eval": 3},
                        budget_s=110, eval_reserve_s=25,
                        lm=LMStageConfig(steps=5000, batch_tokens=2048, lr=4e-3, warmup=20, max_len=640,
                                         log_every=1000))
    metrics = run(tmp_path / "model", recipe, log=lambda m: None)
    saved = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert saved["eval"] == metrics["eval"] and saved["recipe"]["hidden"] == 64
    # The budget is the whole recipe's: the LM stage gets what data and tokenizer left, less the reserve.
    assert metrics["lm_stage"]["seconds"] >= 60 and metrics["total_seconds"] <= 115
    assert metrics["lm_stage"]["response_loss"] < 2.0  # from ~7 (uniform over the vocabulary)
    seen = metrics["eval"]["val_seen"]
    # It learned the protocol in 110 s (an untrained model scores 0): measured SR_t 0.84, SR 0.45.
    assert seen["n"] > 0 and seen["SR_t"] >= 0.5 and seen["SR"] >= 0.15
    assert set(seen["by_modality"]) and set(seen["by_kind"])
    assert seen["guided"]["n"] == seen["n"] and set(seen["guided"]["by_kind"]) == set(seen["by_kind"])
    reloaded = ImageBindLLM.from_pretrained(tmp_path / "model", device="cpu")
    assert reloaded.config.prompt_template == "alpaca" and reloaded.tokenizer.vocab_size == 1024


def test_tokenizer_sample_keeps_every_non_ascii_pair(tmp_path: Path, calls):
    """``max_docs`` trains the BPE on a seeded sample, but pairs in other scripts are always in it, so
    their characters get pieces of their own instead of byte fallback."""
    import sentencepiece as spm

    pairs = [tool_pair(c["prompt"], c["output"], c["prefill"]) for c in calls if c["output"].isascii()][:60]
    pairs.append(("Name: ", "ваыфъ ёжзий ваыфъ"))
    tok = train_tokenizer(pairs, tmp_path / "t.model", 600, max_docs=30, seed=1)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model"))
    pieces = [sp.id_to_piece(i) for i in tok.encode("ваыфъ", bos=False)]
    assert pieces and not any(p.startswith("<0x") for p in pieces)
    # ... except names in random CJK / kana / Hangul characters: left out, so they stay byte pieces
    pairs.append(("Name: ", "ваыфъ 冀蠡"))
    tok = train_tokenizer(pairs, tmp_path / "t2.model", 600, max_docs=30, seed=1)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t2.model"))
    assert all(sp.id_to_piece(i).startswith("<0x") for i in tok.encode("冀蠡", bos=False))
    assert tok.decode(tok.encode(pairs[0][0] + pairs[0][1])) == pairs[0][0] + pairs[0][1]
