"""The demo model's place inside the package (``--model demo``).

A small ImageBind-LLM trained by our own pipeline (``python -m ibllm_agent.training.demo DIR``) on the
seeded synthetic data, shipped as package data so the whole stack runs offline on a fresh install.
Its folder holds the usual checkpoint files plus ``metrics.json`` (the recipe and the held-out scores
it reached). A source tree without it (e.g. a checkpoint removed to rebuild it): ``demo_model_dir``
names the missing file and the command that builds it.
"""

from __future__ import annotations

from pathlib import Path

from ibllm_agent.errors import CheckpointError

DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
_FILES = ("config.json", "base.safetensors", "adapter.safetensors", "encoder.safetensors", "tokenizer.model")


def demo_model_dir() -> Path:
    """The shipped demo model's folder; ``CheckpointError`` naming the missing file when the install
    lacks it (e.g. a source tree whose checkpoint was removed), with the command that rebuilds it."""
    missing = [f for f in _FILES if not (DEMO_DIR / f).is_file()]
    if missing:
        raise CheckpointError(
            f"the demo model is not installed: {DEMO_DIR / missing[0]} is missing. Rebuild it with "
            f"`python -m ibllm_agent.training.demo {DEMO_DIR}` or pass --model DIR|official|tiny"
        )
    return DEMO_DIR


__all__ = ["DEMO_DIR", "demo_model_dir"]
