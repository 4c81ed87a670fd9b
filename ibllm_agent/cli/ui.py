"""``ibllm-agent ui``: planned browser chat interface (not available in this release)."""

from __future__ import annotations

import typer

from ibllm_agent.cli._planned import register_planned


def register(app: typer.Typer) -> None:
    register_planned(
        app,
        "ui",
        "Open a browser chat interface.",
        "a web page to chat with the agent, attach images, audio, video and point clouds, set "
        "per-modality weights and see tool calls and their outputs.",
    )
