"""``ibllm-agent serve``: planned HTTP API server (not available in this release)."""

from __future__ import annotations

import typer

from ibllm_agent.cli._planned import register_planned


def register(app: typer.Typer) -> None:
    register_planned(
        app,
        "serve",
        "Serve the agent over HTTP.",
        "an OpenAI-compatible chat-completions API and a LangGraph agent endpoint with persistent "
        "conversation memory (installed with the 'serve' extra).",
    )
