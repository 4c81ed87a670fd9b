"""The agent runtime: ``build_agent`` and what it is made of.

- ``runtime``: ``build_agent`` → ``Agent`` (a ``create_agent`` graph + memory + workspace + tools),
  ``TurnResult``.
- ``chat_loading``: ``load_chat_model`` — a chat model from a model object, preset name, folder or
  ``scripted:PATH``.
- ``tool_list``: the tools an agent binds (installed + usable built-in tools, or the caller's list).
- ``workspace``: per-thread files under GPT4Tools names; the path gate every tool goes through.
- ``memory``: memory URL → LangGraph checkpointer; thread listing/deletion.
- ``registry``: tool registry (GPT4Tools names, ``@tool`` functions, entry points), ``ToolContext``.
- ``models``: ``ModelPool`` — lazy heavy-model loading under a memory budget with LRU unloading.
- ``middleware``: tool errors → observations, step limit, crash repair.
- ``limits``: ``AgentLimits`` (tool time limit, observation size, one turn per thread).

Names are imported lazily so ``import ibllm_agent.agent`` does not import LangChain.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_agent": "ibllm_agent.agent.runtime",
    "Agent": "ibllm_agent.agent.runtime",
    "TurnResult": "ibllm_agent.agent.runtime",
    "TurnEvent": "ibllm_agent.agent.runtime",
    "ToolCallRecord": "ibllm_agent.agent.runtime",
    "load_chat_model": "ibllm_agent.agent.chat_loading",
    "Workspace": "ibllm_agent.agent.workspace",
    "ThreadWorkspace": "ibllm_agent.agent.workspace",
    "StoredFile": "ibllm_agent.agent.workspace",
    "Memory": "ibllm_agent.agent.memory",
    "ThreadInfo": "ibllm_agent.agent.memory",
    "open_memory": "ibllm_agent.agent.memory",
    "ToolRegistry": "ibllm_agent.agent.registry",
    "ToolContext": "ibllm_agent.agent.registry",
    "current_context": "ibllm_agent.agent.registry",
    "default_registry": "ibllm_agent.agent.registry",
    "gpt4tools_tool": "ibllm_agent.agent.registry",
    "ModelPool": "ibllm_agent.agent.models",
    "AgentLimits": "ibllm_agent.agent.limits",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ibllm_agent.agent' has no attribute {name!r}")
