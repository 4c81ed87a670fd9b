"""ibllm-agent: ImageBind-LLM as a LangChain chat model that calls tools.

Public API (imported lazily so ``import ibllm_agent`` stays light; nothing heavy happens at import):

- ``load_model``            name or folder → ``MultimodalLLM`` (media stage + model), Settings rules
                            for device/dtype (``ibllm_agent.loading``)
- ``ImageBindLLM``          the multimodal LLaMA: token ids + visual features (``ibllm_agent.model``)
- ``MediaEncoder``          the media stage: media → fused ImageBind features (``ibllm_agent.media_encoder``)
- ``ChatImageBindLLM``      the LangChain chat model (``ibllm_agent.chat``)
- ``VisualCache``           the FAISS cache of image features (``ibllm_agent.cache``)
- ``build_agent``           a LangGraph agent with memory and tools (``ibllm_agent.agent``)
- ``media``                 loaders: ``ibllm_agent.media.load(source, modality)``
- ``Media``, ``Sampling``, ``CacheSettings``  typed values passed between stages
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "ibllm_agent.loading",
    "MultimodalLLM": "ibllm_agent.multimodal",
    "MediaEncoder": "ibllm_agent.media_encoder",
    "VisualFeatures": "ibllm_agent.types",
    "ImageBindLLM": "ibllm_agent.model",
    "ChatImageBindLLM": "ibllm_agent.chat",
    "VisualCache": "ibllm_agent.cache",
    "build_agent": "ibllm_agent.agent",
    "Media": "ibllm_agent.types",
    "Sampling": "ibllm_agent.types",
    "CacheSettings": "ibllm_agent.types",
    "Generation": "ibllm_agent.types",
    "Settings": "ibllm_agent.config",
}

__all__ = [*_LAZY, "media", "__version__"]


def __dir__() -> list[str]:
    # The lazy names too, so completion and help() show the public API.
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in {"media", "encoders", "protocol", "prompts", "tools", "training"}:
        return importlib.import_module(f"ibllm_agent.{name}")
    raise AttributeError(f"module 'ibllm_agent' has no attribute {name!r}")
