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
