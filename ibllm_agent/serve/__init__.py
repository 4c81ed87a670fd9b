"""Serving: an OpenAI-compatible HTTP API with a batching scheduler, the agent's thread endpoint and
a Gradio UI (extra ``ibllm-agent[serve]``).

- ``create_app(model, ServeConfig(...))`` — the FastAPI app (``app.py``; agent routes ``threads.py``)
- ``BatchScheduler`` — concurrent requests batched into shared forward passes (``scheduler.py``)
- ``safety.py`` — what a client may make the server fetch, bearer keys, body size limit
- ``openai_messages.py`` — OpenAI messages and content parts → LangChain messages
- ``turns.py`` — per-turn model settings for a shared agent graph
- ``ui.py`` — the Gradio chat (``ibllm-agent ui``)
"""

from __future__ import annotations

from ibllm_agent.serve.config import ServeConfig
from ibllm_agent.serve.scheduler import BatchScheduler, QueueFullError, ServiceUnavailableError

__all__ = ["BatchScheduler", "QueueFullError", "ServeConfig", "ServiceUnavailableError", "create_app"]


def create_app(model, config: ServeConfig | None = None):
    """The ASGI app (see ``ibllm_agent.serve.app.create_app``)."""
    from ibllm_agent.serve.app import create_app as _create

    return _create(model, config)
