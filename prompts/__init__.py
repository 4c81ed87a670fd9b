"""Prompt templates, shipped as package data (``ibllm_agent.prompts``).

Each ``*.txt`` file is read verbatim (no stripping: a trailing newline is part of a template).
A *model template* wraps a fully rendered instruction the way a checkpoint was trained:

- ``alpaca``: ImageBind-LLM's ``PROMPT_DICT`` (no-input / input forms; the answer follows
  ``### Response:`` directly).
- ``vicuna_v1_5``: GPT4Tools HEAD inference wrapper ``USER: \\n{instruction}ASSISTANT:``.
- ``vicuna_v1_1``: the first GPT4Tools LoRA's ``{instruction}\\n### ASSISTANT:\\n``.
- ``raw``: the instruction unchanged.

The template name is saved in a model's config so a checkpoint is always paired with the template it
was trained on.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from ibllm_agent.errors import ConfigError

# name -> (file without input, file with input or None)
MODEL_TEMPLATES: dict[str, tuple[str, str | None]] = {
    "alpaca": ("alpaca_no_input.txt", "alpaca_input.txt"),
    "vicuna_v1_5": ("vicuna_v1_5.txt", None),
    "vicuna_v1_1": ("vicuna_v1_1.txt", None),
    "raw": ("raw.txt", None),
}


@lru_cache(maxsize=None)
def read_template(filename: str) -> str:
    """Return the verbatim text of ``prompts/<filename>``."""
    try:
        return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"unknown prompt file {filename!r} in ibllm_agent.prompts") from None


def format_prompt(instruction: str, input: str | None = None, template: str = "alpaca") -> str:
    """Wrap ``instruction`` (and optional ``input``) with a model template.

    Like the reference ``format_prompt``, ``input`` of ``None`` or ``""`` selects the no-input form.
    Plain ``str.replace`` is used (not ``str.format``) so braces inside user text are kept as typed.
    """
    if template not in MODEL_TEMPLATES:
        raise ConfigError(f"unknown prompt template {template!r}; known: {sorted(MODEL_TEMPLATES)}")
    plain, with_input = MODEL_TEMPLATES[template]
    if input:
        if with_input is None:
            # Templates without an input slot put the input after the instruction.
            instruction = f"{instruction}\n\n{input}"
        else:
            return read_template(with_input).replace("{instruction}", instruction).replace("{input}", input)
    return read_template(plain).replace("{instruction}", instruction)


# -- GPT4Tools protocol blocks -------------------------------------------------------------------------
# variant -> (PREFIX, FORMAT_INSTRUCTIONS, SUFFIX, image-announcement pair), verbatim files.
# "training": what the GPT4Tools LoRA was fit to (generate_annoations.py PROMPT_FORMAT): ``{ai_prefix}``
#   already substituted, an empty line after ``Previous conversation:``, ends with
#   ``Let's think step by step.\n`` and earlier steps are appended after it.
# "demo": the runtime demo (gpt4tools_demo.py): ``{ai_prefix}`` and ``{agent_scratchpad}`` slots.
GPT4TOOLS_VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "training": (
        "gpt4tools_train_prefix.txt",
        "gpt4tools_train_format.txt",
        "gpt4tools_train_suffix.txt",
        "gpt4tools_train_announce.txt",
    ),
    "demo": (
        "gpt4tools_demo_prefix.txt",
        "gpt4tools_demo_format.txt",
        "gpt4tools_demo_suffix.txt",
        "gpt4tools_demo_announce.txt",
    ),
}


def gpt4tools_blocks(variant: str = "training") -> tuple[str, str, str, str]:
    """Return the verbatim ``(prefix, format_instructions, suffix, announcement)`` of a variant."""
    if variant not in GPT4TOOLS_VARIANTS:
        raise ConfigError(f"unknown GPT4Tools prompt variant {variant!r}; known: {sorted(GPT4TOOLS_VARIANTS)}")
    return tuple(read_template(f) for f in GPT4TOOLS_VARIANTS[variant])  # type: ignore[return-value]


def format_chat(
    turns: "list[tuple[str, str]] | tuple[tuple[str, str], ...]",
    user: str,
    *,
    system: str | None = None,
    template: str = "alpaca",
) -> str:
    """Render a multi-turn chat for a single-turn instruction model.

    ImageBind-LLM was tuned on single-turn Alpaca prompts only, so a conversation is folded into that
    shape: the system text (if any) and the newest user text form the instruction, and the earlier
    turns become the input (``chat_history.txt``: ``Previous conversation:`` + ``Human:``/``AI:``
    lines). With no earlier turns and no system text this is exactly ``format_prompt(user)``.
    """
    instruction = f"{system}\n\n{user}" if system else user
    if not turns:
        return format_prompt(instruction, None, template)
    lines = "\n".join(f"Human: {h}\nAI: {a}" for h, a in turns)
    history = read_template("chat_history.txt").replace("{history}", lines)
    return format_prompt(instruction, history, template)
