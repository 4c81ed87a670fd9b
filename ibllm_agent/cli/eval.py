"""``ibllm-agent eval``: planned evaluation runner (not available in this release)."""

from __future__ import annotations

import typer

from ibllm_agent.cli._planned import register_planned


def register(app: typer.Typer) -> None:
    register_planned(
        app,
        "eval",
        "Evaluate the model and the agent.",
        "GPT4Tools-style tool-use metrics (successful rate of thought, action, arguments) on the "
        "seen/unseen validation sets, and multimodal answer benchmarks.",
    )
