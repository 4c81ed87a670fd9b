"""The ImageBind-LLM model: LLaMA + bind network + gated visual injection + PEFT (see ``llm.py``).

Exports are resolved lazily so ``import ibllm_agent.model.tokenizer`` does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ImageBindLLM": "ibllm_agent.model.llm",
    "ImageBindLLMConfig": "ibllm_agent.model.config",
    "VisualInjection": "ibllm_agent.model.injection",
    "BindNetwork": "ibllm_agent.model.bind",
    "PeftLinear": "ibllm_agent.model.peft",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ibllm_agent.model' has no attribute {name!r}")
