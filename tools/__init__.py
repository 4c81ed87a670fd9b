"""Tools the agent can call (installed as ``ibllm_agent.tools``): one module per tool family.

- ``catalog``: GPT4Tools names, descriptions, input fields (data only).
- ``detection`` (GroundingDINO), ``segmentation`` (SAM), ``editing`` (inpainting, InstructPix2Pix),
  ``generation`` (SD text-to-image, any-to-image unCLIP), ``understanding`` (our own model answers),
  ``conditions`` (weightless extractors: Canny), ``cascade`` (grounding an answer's nouns).
- ``backends``: which weights each model needs and how it loads through the model pool;
  ``toolset``: the LangChain tools, ``default_tools`` and ``tool_status``; ``tiny``: random-init
  backends for tests and benchmarks.

Names are imported lazily so ``import ibllm_agent.tools`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "default_tools": "ibllm_agent.tools.toolset",
    "tool_status": "ibllm_agent.tools.toolset",
    "ToolStatus": "ibllm_agent.tools.toolset",
    "ToolOptions": "ibllm_agent.tools.images",
    "Detection": "ibllm_agent.tools.detection",
    "GroundingDinoDetector": "ibllm_agent.tools.detection",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ibllm_agent.tools' has no attribute {name!r}")
