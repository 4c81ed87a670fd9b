"""Server settings (one dataclass; the CLI fills it from flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibllm_agent.serve.safety import RemotePolicy


@dataclass
class ServeConfig:
    """Everything ``create_app`` needs besides the model.

    model_id: the name ``/v1/models`` lists and requests must use (``model`` field).
    api_keys: bearer keys accepted on ``/v1/*`` (empty = no auth; ``/health`` is always open).
    max_body_bytes: larger request bodies get 413.
    max_batch_size / max_wait_ms / batching: the scheduler (see ``scheduler.BatchScheduler``).
    max_queue: generations waiting for a batch before new ones get 429.
    max_concurrent: requests in progress (generating or waiting) before new ones get 429.
    max_new_tokens: the completion budget when a request gives none; ``max_tokens_cap`` the most a
    request may ask for.
    remote: what the server may fetch for a client (``safety.RemotePolicy``).
    memory_url / workspace_dir: the agent's checkpointer and workspace root (share both between
    processes to scale out; ``None`` = the settings' defaults).
    agent_tools: tools for the agent endpoint (names or tools; ``None`` = the default registry).
    agent_workers: agent turns running at once in this process.
    max_steps: tool steps per agent turn.
    chat_options: extra ``ChatImageBindLLM`` keyword arguments for every chat model the server builds.
    """

    model_id: str = "ibllm"
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    batching: bool = True
    max_queue: int = 64
    max_concurrent: int = 64
    max_new_tokens: int = 256
    max_tokens_cap: int = 4096
    remote: RemotePolicy = field(default_factory=RemotePolicy)
    memory_url: str | None = None
    workspace_dir: str | Path | None = None
    agent_tools: Any = None
    agent_workers: int = 4
    max_steps: int = 8
    chat_options: dict[str, Any] = field(default_factory=dict)
