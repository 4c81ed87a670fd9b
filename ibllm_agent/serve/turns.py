"""Per-turn model settings for an agent whose graph is shared between turns.

The server and the UI run many turns through one compiled agent graph, each with its own sampling,
modality weights and cache knobs. ``with turn_settings(temperature=0, modality_weights={...}):``
around a turn makes ``TurnSettingsMiddleware`` pass them to every model call of that turn as
per-call keyword arguments (``ModelRequest.model_settings``), without touching the shared chat model.
A context variable carries them, so concurrent turns in other threads never see each other's.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from langchain.agents.middleware import AgentMiddleware

__all__ = ["TurnSettingsMiddleware", "current_turn_settings", "turn_settings"]

_SETTINGS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ibllm_turn_settings",
                                                                                   default=None)
# Keyword arguments ChatImageBindLLM takes per call.
ALLOWED = ("temperature", "top_p", "max_new_tokens", "seed", "modality_weights", "cache")


@contextmanager
def turn_settings(**settings: Any) -> Iterator[None]:
    """Model settings for the turn(s) run inside this block (``None`` values are left out)."""
    unknown = sorted(set(settings) - set(ALLOWED))
    if unknown:
        from ibllm_agent.errors import ConfigError

        raise ConfigError(f"unknown turn settings {unknown}; known: {list(ALLOWED)}")
    token = _SETTINGS.set({k: v for k, v in settings.items() if v is not None})
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def current_turn_settings() -> dict[str, Any]:
    return dict(_SETTINGS.get() or {})


class TurnSettingsMiddleware(AgentMiddleware):
    """Adds the current ``turn_settings`` to each model call's ``model_settings``."""

    def _with_settings(self, request: Any) -> Any:
        settings = _SETTINGS.get()
        if not settings:
            return request
        return request.override(model_settings={**(request.model_settings or {}), **settings})

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(self._with_settings(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return await handler(self._with_settings(request))
