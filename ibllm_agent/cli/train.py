"""``ibllm-agent train``: planned fine-tuning entry point (not available in this release)."""

from __future__ import annotations

import typer

from ibllm_agent.cli._planned import register_planned


def register(app: typer.Typer) -> None:
    register_planned(
        app,
        "train",
        "Fine-tune ImageBind-LLM.",
        "image-text pre-training of the bind network and instruction/tool-use fine-tuning "
        "(bias, norm, LoRA, gates) from a YAML config, single GPU or multi-GPU with accelerate "
        "(installed with the 'train' extra).",
    )
