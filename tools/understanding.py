"""``Get Photo Description`` and ``Answer Question About The Image``, answered by our own multimodal
model (any ``TextGenerator``: the agent's ImageBind-LLM sees the image itself), where GPT4Tools ran
BLIP captioning / VQA models. Results have GPT4Tools' shape: the caption or answer as plain text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

__all__ = ["CAPTION_PROMPT", "ask"]

CAPTION_PROMPT = "Describe this image in one sentence."


def ask(generator: Any, image_path: str | Path, question: str, max_new_tokens: int = 64) -> str:
    """The model's answer to ``question`` about the image (its own template, temperature 0)."""
    from ibllm_agent.prompts import format_prompt
    from ibllm_agent.types import Media, Sampling

    if generator is None:
        raise ConfigError(
            "this tool is answered by the multimodal chat model and none was given: pass --model to "
            "`ibllm-agent tool`, default_tools(generator=...) in Python, or let build_agent add it"
        )
    prompt = format_prompt(question, None, generator.prompt_template)
    media = [Media("image", str(image_path), name=Path(image_path).name)]
    out = generator.generate(prompt, media, sampling=Sampling(max_new_tokens=max_new_tokens, temperature=0.0))
    return " ".join(out.text.split())
