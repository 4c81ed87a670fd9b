"""``ibllm-agent ui``: the agent in a browser (Gradio; extra ``serve``).

    ibllm-agent ui --model DIR --port 7860

Threads live in the agent's memory (``--memory``, SQLite under the workspace by default), so a
reloaded page — or a restarted UI — shows the conversation again.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ibllm_agent.cli.run import (
    CACHE_OPT,
    DEVICE_OPT,
    MEMORY_OPT,
    MODEL_HELP,
    NO_TOOLS_OPT,
    TOOL_OPT,
    WORKSPACE_OPT,
    tool_choice,
)


def register(app: typer.Typer) -> None:
    @app.command("ui", help="Open a browser chat with the agent: upload images, audio, video and point clouds, "
                 "set modality weights, cache and sampling, see tool calls and the images tools make.")
    def ui(
        model: str = typer.Option("auto", "--model", help=MODEL_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
        port: int = typer.Option(7860, "--port", help="TCP port."),
        memory: str | None = MEMORY_OPT,
        workspace: Path | None = WORKSPACE_OPT,
        tool: list[str] = TOOL_OPT,
        no_tools: bool = NO_TOOLS_OPT,
        device: str | None = DEVICE_OPT,
        cache: Path | None = CACHE_OPT,
        max_steps: int = typer.Option(8, "--max-steps", min=1, help="Tool steps per turn."),
    ) -> None:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
        from ibllm_agent import ChatImageBindLLM
        from ibllm_agent.agent import build_agent
        from ibllm_agent.cli.serve import load_generator
        from ibllm_agent.config import get_settings
        from ibllm_agent.serve.turns import TurnSettingsMiddleware
        from ibllm_agent.serve.ui import build_ui

        generator, _ = load_generator(model, device, cache)
        settings = get_settings(workspace_dir=workspace, memory_url=memory, device=device)
        agent = build_agent(ChatImageBindLLM(model=generator), tools=tool_choice(tool, no_tools),
                            memory=settings.memory_url, workspace=settings.workspace_dir, max_steps=max_steps,
                            device=settings.device, middleware=[TurnSettingsMiddleware()])
        with agent:
            demo = build_ui(agent)
            demo.queue(default_concurrency_limit=4).launch(
                server_name=host, server_port=port, allowed_paths=[str(agent.workspace.root)], quiet=False)
