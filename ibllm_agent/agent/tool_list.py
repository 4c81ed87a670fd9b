"""The tools an agent binds: the default set (installed + usable built-in tools) or the user's list."""

from __future__ import annotations

from typing import Any

from ibllm_agent.errors import ToolRegistryError

__all__ = ["default_agent_tools", "resolve_tools"]


def default_agent_tools(chat: Any) -> list[Any]:
    """Installed tools (entry points) plus the built-in vision tools that can run here (weights
    present or none needed); an installed tool with a built-in tool's name replaces it."""
    from ibllm_agent.agent.registry import default_registry
    from ibllm_agent.tools import default_tools

    installed = default_registry().tools()
    names = {t.name for t in installed}
    from ibllm_agent.types import TextGenerator

    generator = getattr(chat, "model", None)
    if not isinstance(generator, TextGenerator):  # another chat model (its .model may be a name string)
        generator = None
    # The media stage's visual cache (a MultimodalLLM's) also enhances any-to-image.
    cache = getattr(getattr(generator, "media", None), "cache", None)
    builtin = default_tools(generator=generator, cache=cache, available_only=True)
    return installed + [t for t in builtin if t.name not in names]


def resolve_tools(tools: Any) -> list[Any]:
    """Tools from a ``ToolRegistry`` or a list of tools, functions and registered names (``None``:
    the default registry's tools); duplicate names are an error."""
    from langchain_core.tools import BaseTool

    from ibllm_agent.agent.registry import ToolRegistry, _as_tool, default_registry

    if tools is None:
        return default_registry().tools()
    if isinstance(tools, ToolRegistry):
        return tools.tools()
    out = []
    for t in tools:
        if isinstance(t, str):
            out.append(default_registry().get(t))
        elif isinstance(t, BaseTool) or callable(t):
            out.append(_as_tool(t))
        else:
            raise ToolRegistryError(f"cannot use {t!r} as a tool: pass a tool, a function or a registered name")
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ToolRegistryError(f"duplicate tool names: {dupes}")
    return out
