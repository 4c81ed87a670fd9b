"""``ibllm-agent demo``: planned bundled demonstrations (not available in this release)."""

from __future__ import annotations

import typer

from ibllm_agent.cli._planned import register_planned


def register(app: typer.Typer) -> None:
    register_planned(
        app,
        "demo",
        "Run the bundled demonstrations.",
        "the reference demos (image + audio description, 3D point-cloud description, any-to-image) "
        "on the example media, printing each prompt and answer.",
    )
