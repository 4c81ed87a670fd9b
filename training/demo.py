"""The demo model's recipe: synthetic data → tokenizer → small LLaMA from scratch → checkpoint.

``python -m ibllm_agent.training.demo OUT [--minutes 20]`` regenerates the model that ships as
``--model demo``: it writes the seeded synthetic data set (``training.synthetic``) and the
LangChain-shaped generic calls (``training.calls``), trains a SentencePiece BPE on the very prompts
the model will see (a copy is the same tokens as its source; fixed template lines and shown tool
descriptions are single pieces), builds an ``ImageBindLLM`` around a small LLaMA whose initial weights
hold an induction circuit (``training.induction``; tiny ImageBind, closed gates), trains the LM
from scratch (``training.lm``) within the time budget, saves it and scores the held-out splits with
the evaluation harness (``metrics.json`` beside the checkpoint).

Every pair is rendered the way the chat model renders a call: the GPT4Tools prompt inside the
model's template (``alpaca``), plus the forced prefill of a ``tool_choice`` where the sample has one
(``protocol.prefill_for``; a space after the template's ``:`` as ``chat.rendering`` adds it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ibllm_agent.prompts import format_chat, format_prompt
from ibllm_agent.training.lm import LMStageConfig

from ibllm_agent import protocol as P
from ibllm_agent.errors import ConfigError

TEMPLATE = "alpaca"


@dataclass
class DemoRecipe:
    """Sizes of everything; the defaults are the shipped model."""

    seed: int = 0
    vocab_size: int = 4096
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 344
    context_length: int = 1024
    rope_theta: float = 1e6  # slow rotary pairs for the induction heads' content match (``training.induction``)
    induction_init: bool = True  # start from a copying circuit (``training.induction.induction_init``)
    induction_zero_rest: bool = False  # True: the other heads, MLPs and upper layers start as zero branches
    call_episodes: int = 4000
    forced_fraction: float = 0.3  # GPT4Tools action samples also seen after a tool_choice prefill
    # SyntheticConfig overrides. Many episodes over thousands of (unrendered) names: about one pass over
    # the data in the time budget, so names and values can only be copied, never memorised.
    # The train split leans towards generic functions (a verb found by its noun in the offered list, values
    # copied in order), the hardest seen kind; the held-out splits keep the generator's own mix.
    synthetic: dict[str, Any] = field(default_factory=lambda: {
        "n_train": 16000, "names_train": 3000, "n_chat": 400,
        "train_mix": {"tool": 0.27, "chain": 0.07, "modality": 0.18, "no_tool": 0.08, "function": 0.4}})
    copy_pairs: int = 6000  # short "repeat this" pairs: cheap tokens that teach copying (induction)
    tokenizer_docs: int = 8000  # pairs the BPE is trained on (a seeded sample; every non-ASCII pair kept)
    # Wall clock of the whole recipe (data → scores); the LM stage gets what data and tokenizer left,
    # less ``eval_reserve_s`` for scoring (None: the LM stage keeps its own ``time_budget_s``).
    budget_s: float | None = None
    eval_reserve_s: float = 45.0
    lm: LMStageConfig = field(default_factory=lambda: LMStageConfig(
        steps=20000, max_len=640, prompt_loss_weight=0.5, autocast="bfloat16", compile=True,
        processes=2))
    # No copy warm-up (``LMStageConfig.copy_steps``): the induction init gives the copy heads at step 0;
    # a trained warm-up formed them for one seed in five within the budget (see the README).


# -- pairs ---------------------------------------------------------------------------------------------
def with_prefill(prompt: str, prefill: str) -> str:
    """The chat model's final prompt for a forced ``tool_choice`` (``chat.rendering.render``)."""
    return prompt + (" " if prefill and prompt.endswith(":") else "") + prefill


def tool_pair(instruction: str, output: str, prefill: str = "") -> tuple[str, str]:
    """(final prompt, response) of one tool-protocol sample. Without a prefill the answer follows the
    template's ``Response:`` after a space, as LLaMA-family models were trained (``▁Thought``)."""
    prompt = format_prompt(instruction, None, TEMPLATE)
    if prefill:
        return with_prefill(prompt, prefill), output
    return prompt, " " + output


def _forced_variants(rng: random.Random, item: dict[str, Any]) -> list[tuple[str, str]]:
    """A GPT4Tools action sample as it reads after ``tool_choice=NAME`` / ``"any"`` prefills (of several
    tools: ``Action:``, the name is the model's)."""
    out = item["output"]
    tool = (item.get("target") or {}).get("tool")
    if not tool or not out.startswith(P.THOUGHT_YES):
        return []
    by_name = P.prefill_for(tool, [])
    anyone = P.prefill_for("any", [])
    prefill = by_name if rng.random() < 0.5 else anyone
    if not out.startswith(prefill):
        return []
    return [tool_pair(item["instruction"], out[len(prefill):], prefill)]


def synthetic_pairs(data_dir: Path, recipe: DemoRecipe) -> list[tuple[str, str]]:
    """Pairs from the synthetic set: GPT4Tools train split (+ forced variants) and the plain chats."""
    rng = random.Random(f"pairs-{recipe.seed}")
    pairs: list[tuple[str, str]] = []
    for item in json.loads((data_dir / "gpt4tools_train.json").read_text(encoding="utf-8")):
        pairs.append(tool_pair(item["instruction"], item["output"]))
        if rng.random() < recipe.forced_fraction:
            pairs += _forced_variants(rng, item)
    for item in json.loads((data_dir / "alpaca.json").read_text(encoding="utf-8")):
        pairs.append((format_prompt(item["instruction"], item.get("input") or None, TEMPLATE), " " + item["output"]))
    # Text-only chats; the media chats (llava*.json) need the visual path, which this stage leaves closed.
    for name in ("sharegpt.json",):
        for conv in json.loads((data_dir / name).read_text(encoding="utf-8")):
            turns = conv["conversations"]
            past: list[tuple[str, str]] = []
            for human, gpt in zip(turns[0::2], turns[1::2]):
                user = human["value"].replace("<image>", "").strip()
                pairs.append((format_chat(past, user, template=TEMPLATE), " " + gpt["value"]))
                past.append((user, gpt["value"]))
    return pairs


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def copy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Short pairs whose answer repeats a random item of the prompt: file names, function names,
    numbers, places, names in other scripts. The tool-use answers are mostly such copies (the file
    from the request, the tool from the list, the value from the request); a small model learns the
    copying itself far faster from many short sequences than from long prompts alone."""
    from ibllm_agent.training.calls import _PLACES, foreign_name

    rng = random.Random(f"copy-{seed}")

    def item() -> str:
        kind = rng.randrange(5)
        if kind == 0:
            modality, ext = rng.choice([("image", ".png"), ("audio", ".wav"), ("video", ".mp4")])
            return f"{modality}/" + "".join(rng.choice(_LETTERS) for _ in range(8)) + ext
        if kind == 1:
            return rng.choice(["get", "find", "count", "check", "convert"]) + "_" + "".join(
                rng.choice(["ka", "zo", "ri", "mu", "te", "lan", "vi", "nox", "ta", "fi"]) for _ in range(rng.randint(2, 3)))
        if kind == 2:
            return str(rng.randint(0, 9999))
        if kind == 3:
            return rng.choice(_PLACES)
        return foreign_name(rng)

    out = []
    for _ in range(n):
        items = [item() for _ in range(rng.randint(1, 4))]
        want = rng.randrange(len(items))
        listing = "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
        prompt = format_prompt(f"Repeat item {want + 1} exactly.\n{listing}", None, TEMPLATE)
        out.append((prompt, " " + items[want]))
    return out


def call_pairs(samples: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [tool_pair(s["prompt"], s["output"], s["prefill"]) for s in samples]


# -- model ---------------------------------------------------------------------------------------------
def build_model(tokenizer, recipe: DemoRecipe):
    """A random-init ``ImageBindLLM``: the recipe's LLaMA, tiny ImageBind, no LoRA/bias adapters."""
    import torch

    from ibllm_agent.encoders.config import preset as encoder_preset
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.model.config import ImageBindLLMConfig

    lm = {
        "hidden_size": recipe.hidden, "num_hidden_layers": recipe.layers, "num_attention_heads": recipe.heads,
        "num_key_value_heads": recipe.heads, "intermediate_size": recipe.intermediate,
        "vocab_size": tokenizer.vocab_size, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": recipe.rope_theta},
        "max_position_embeddings": recipe.context_length, "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
    }
    config = ImageBindLLMConfig(
        lm=lm, visual_dim=encoder_preset("tiny_w3d").out_dim, encoder="tiny_w3d", encoder_weights=None,
        lora_rank=0, w_bias=False, w_lora=False, prompt_template=TEMPLATE, text_only="off",
        context_length=recipe.context_length, context_overflow="truncate",
        sampling={"max_new_tokens": 128},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = ImageBindLLM(config, tokenizer=tokenizer, device="cpu")
    if recipe.induction_init:
        from ibllm_agent.training.induction import induction_init

        induction_init(model.lm, seed=recipe.seed, zero_rest=recipe.induction_zero_rest)
    model.encoder_seed = recipe.seed  # the tiny ImageBind is built from this seed (saved with the model)
    return model


def fixed_pieces(min_chars: int = 12) -> list[str]:
    """The fixed lines of the prompt templates (GPT4Tools blocks of every variant, Alpaca), each to be
    one piece: the text around ``{placeholders}``, split at newlines, lines of ``min_chars`` or more,
    spaces written ``▁`` as SentencePiece sees them. Longest first."""
    import re

    from ibllm_agent.prompts import GPT4TOOLS_VARIANTS, read_template

    files = {f for files in GPT4TOOLS_VARIANTS.values() for f in files} | {"alpaca_no_input.txt", "alpaca_input.txt"}
    lines = {line for f in sorted(files) for chunk in re.split(r"\{[a-z_]+\}", read_template(f))
             for line in chunk.split("\n") if len(line.strip()) >= min_chars}
    return sorted((line.replace(" ", "\u2581") for line in lines), key=lambda x: (-len(x), x))


def description_pieces(pairs: list[tuple[str, str]]) -> list[str]:
    """The registered tools' descriptions that the training prompts show (``tools.catalog``), each to be
    one piece (``▁`` for spaces): the model learns what a listed tool does from its requests, and a
    tool line costs its name's words plus one token. Tools the data holds out stay words."""
    from ibllm_agent.tools.catalog import PROJECT_DESCRIPTIONS, RUNTIME_DESCRIPTIONS

    shown = {d for d in [*RUNTIME_DESCRIPTIONS.values(), *PROJECT_DESCRIPTIONS.values()]
             if any(f": {d}\n" in p for p, _ in pairs)}
    return sorted(d.replace(" ", "\u2581") for d in shown)


def train_tokenizer(pairs: list[tuple[str, str]], out: Path, vocab_size: int, *, max_docs: int | None = None,
                    seed: int = 0, pieces: Sequence[str] = ()):
    """A BPE under which a copy is the same run of tokens as its source. Word pieces with the space
    as a piece of its own (``▁`` is a user-defined piece): ``gurite`` is the same tokens in the request
    ``count the gurite``, in the tool list ``count_gurite`` and in the answer, and a file name, an
    object or a value likewise, so the model copies tokens (with multi-word pieces, ``red diamond`` was
    one piece in the request and ``a red`` + ``diamond`` in the answer: 0.72 of the answers' spans
    appeared verbatim among the prompt's tokens; with ``▁``-prefixed words 0.99, but ``▁gu`` in a
    request is not ``gu`` after ``count_``). The fixed template lines (``fixed_pieces``) and ``pieces``
    (``description_pieces``) are single pieces, so the GPT4Tools prompt stays cheap (~210 tokens a pair
    on the demo data, against ~260 with ``▁``-prefixed words and ~210 with multi-word pieces).
    No dummy prefix: a prompt string tokenises the same alone as at the start of a longer text, so the
    response tokens the model learns after a prompt are the ones it must produce there.
    ``max_docs``: train on a seeded sample of that many pairs plus every pair with non-ASCII text (so
    each script keeps its pieces); the sample's statistics are the whole set's."""
    from ibllm_agent.model.tokenizer import train_sentencepiece

    from ibllm_agent.training.calls import byte_level

    # Texts with characters the tokenizer must leave to byte pieces (names in random CJK / kana /
    # Hangul characters) are not trained on: with full character coverage each would become a piece.
    docs = [p + r for p, r in pairs if not byte_level(p + r)]
    if max_docs is not None and len(docs) > max_docs:
        rng = random.Random(f"tokenizer-{seed}")
        rare = [d for d in docs if not d.isascii()]
        docs = rng.sample([d for d in docs if d.isascii()], max(0, max_docs - len(rare))) + rare
    symbols = sorted({*fixed_pieces(), *pieces, "\u2581"}, key=lambda x: (-len(x), x))
    return train_sentencepiece(docs, out, vocab_size, by_line=False, options={
        "split_by_whitespace": True, "user_defined_symbols": symbols, "max_sentencepiece_length": 64,
        "max_sentence_length": 1 << 16, "add_dummy_prefix": False, "input_sentence_size": 0,
    })


# -- evaluation ----------------------------------------------------------------------------------------
EVAL_SPLITS = {"val_seen": "gpt4tools_val_seen.json", "test_unseen": "gpt4tools_test_unseen.json"}


def evaluate(model, data_dir: Path, *, batch_size: int = 16, limit: int | None = None) -> dict[str, Any]:
    """The GPT4Tools metrics of ``model`` on the held-out splits (``eval tools --model`` in process):
    overall, per ``kind``, and per attached ``modality`` (its SR_act is the tool-choice accuracy), for
    free decoding (as GPT4Tools evaluates), and under ``"guided"`` the same for guided decoding
    (``eval tools --guided``: each Action chosen among the offered names, as the chat model decodes)."""
    from ibllm_agent.evaluation.runner import load_gt, predict_tools, score_tools
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.multimodal import MultimodalLLM

    if isinstance(model, ImageBindLLM):  # the LM alone: add its media stage (the samples attach files)
        model = MultimodalLLM.from_llm(model)
    report: dict[str, Any] = {}
    for split, name in EVAL_SPLITS.items():
        gt = load_gt(data_dir / name)[:limit]
        results = []
        for guided in (False, True):
            preds = {p["id"]: p["output"] for p in predict_tools(model, gt, data_dir, batch_size=batch_size,
                                                                  max_new_tokens=64, guided=guided)}
            result = score_tools(gt, preds, by="modality")
            result["by_kind"] = score_tools(gt, preds, by="kind")["by_kind"]
            results.append(result)
        report[split] = {**results[0], "guided": results[1]}
    return report


# -- the whole recipe ----------------------------------------------------------------------------------
def run(out: Path, recipe: DemoRecipe | None = None, *, work: Path | None = None,
        log=print, eval_limit: int | None = None) -> dict[str, Any]:
    """Data → tokenizer → LM stage → ``out`` (checkpoint + ``metrics.json``). Returns the metrics."""
    import tempfile
    import time

    from ibllm_agent.training.calls import generate_calls
    from ibllm_agent.training.lm import encode_pairs, train_lm
    from ibllm_agent.training.synthetic.generate import SyntheticConfig, generate

    recipe = recipe or DemoRecipe()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ibllm-demo-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        data = work / "data"
        generate(data, SyntheticConfig(seed=recipe.seed, **recipe.synthetic))
        pairs = (synthetic_pairs(data, recipe) + call_pairs(generate_calls(recipe.call_episodes, recipe.seed))
                 + copy_pairs(recipe.copy_pairs, recipe.seed))
        tokenizer = train_tokenizer(pairs, work / "tokenizer.model", recipe.vocab_size,
                                    max_docs=recipe.tokenizer_docs, seed=recipe.seed, pieces=description_pieces(pairs))
        examples = encode_pairs(tokenizer, pairs, recipe.lm.max_len)
        if recipe.budget_s is not None:
            left = recipe.budget_s - (time.monotonic() - start) - recipe.eval_reserve_s
            if left <= 0:
                raise ConfigError(f"budget of {recipe.budget_s:.0f} s is spent before the LM stage "
                                  f"({time.monotonic() - start:.0f} s on data and tokenizer)")
            recipe.lm.time_budget_s = left
        log(f"{len(examples)} training pairs, {sum(len(e.ids) for e in examples):,} tokens; "
            f"tokenizer {tokenizer.vocab_size} pieces")
        model = build_model(tokenizer, recipe)
        stage = train_lm(model, examples, recipe.lm, log=log)
        model.save_pretrained(out)
        scores = evaluate(model, data, limit=eval_limit)
    metrics = {"recipe": recipe_dict(recipe), "lm_stage": stage, "eval": scores,
               "total_seconds": time.monotonic() - start}
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def recipe_dict(recipe: DemoRecipe) -> dict[str, Any]:
    return asdict(recipe)


__all__ = ["DemoRecipe", "build_model", "call_pairs", "description_pieces", "evaluate", "fixed_pieces", "run",
           "synthetic_pairs", "tool_pair", "train_tokenizer", "with_prefill"]


def main(argv: list[str] | None = None) -> int:
    """``python -m ibllm_agent.training.demo OUT [--minutes M] [--threads N] [--steps S] [--seed K]``."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="python -m ibllm_agent.training.demo", description=main.__doc__)
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="wall-clock budget of the whole recipe, data to scores")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (cosine schedule length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the data and tokenizer here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = DemoRecipe(seed=args.seed)
    recipe.budget_s = 60.0 * args.minutes
    recipe.lm.seed = args.seed
    if args.steps:
        recipe.lm.steps = args.steps
    metrics = run(args.out, recipe, work=args.work, log=lambda m: print(m, flush=True))
    for split, rep in metrics["eval"].items():
        for mode, r in (("free", rep), ("guided", rep["guided"])):
            print(split, mode, {k: round(r[k], 4) for k in ("SR_t", "SR_act", "SR_args", "SR", "IoU")}, "n", r["n"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
