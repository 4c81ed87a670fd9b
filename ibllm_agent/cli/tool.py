"""``ibllm-agent tool``: run one tool directly, as the agent would, for debugging a tool and scripts.

    ibllm-agent tool "Edge Detection On Image" "image/ab12cd34.png" --workspace DIR
    ibllm-agent tool "Detect the Give Object" "photo.png, red car" --workspace DIR --json

The Action Input is split with GPT4Tools' comma rule (the remainder joins the last field); file names
are resolved inside ``--workspace`` exactly as in an agent thread, and outputs are written there.
``--json`` prints ``{"observation", "files"}`` (files: workspace names of the new files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

# Loader overrides for the tool backends ({key: loader(device)}); tests and benchmarks set tiny ones.
TOOL_LOADERS: dict[str, Any] | None = None


def invoke_tool(tool: Any, action_input: str, workspace: Any, pool: Any) -> tuple[str, list[str]]:
    """Run ``tool`` on a GPT4Tools Action Input inside ``workspace``; ``(observation, new files)``."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from ibllm_agent.agent.registry import _CONTEXT, ToolContext, path_fields_of
    from ibllm_agent.protocol import map_arguments

    args = map_arguments(action_input, convert_to_openai_tool(tool))
    for field in path_fields_of(tool):
        if isinstance(args.get(field), str):
            args[field] = str(workspace.resolve(args[field]))
    before = set(workspace.files())
    token = _CONTEXT.set(ToolContext(thread_id=workspace.thread_id, workspace=workspace, pool=pool))
    try:
        result = tool.invoke(args)
    finally:
        _CONTEXT.reset(token)
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    root = str(workspace.root.resolve()) + "/"
    return text.replace(root, ""), [f for f in workspace.files() if f not in before]


def register(app: typer.Typer) -> None:
    @app.command("tool", help="Run one tool directly: NAME and its Action Input (GPT4Tools comma form).")
    def tool_command(
        name: str = typer.Argument(..., help='Exact tool name, e.g. "Edge Detection On Image".'),
        action_input: str = typer.Argument(..., help='Action Input, e.g. "image/ab12cd34.png, a cat".'),
        workspace: Path = typer.Option(..., "--workspace", help="Folder holding the input files; outputs go here."),
        model: str | None = typer.Option(
            None, "--model", help="Model answering the description/VQA tools (a model folder, 'demo', 'official', 'auto' or 'tiny')."
        ),
        device: str | None = typer.Option(None, "--device", help="Device for tool models (auto/cpu/cuda)."),
        steps: int | None = typer.Option(None, "--steps", min=1, help="Diffusion steps (default: each tool's)."),
        seed: int | None = typer.Option(None, "--seed", help="Seed for diffusion tools."),
        json_out: bool = typer.Option(False, "--json", help='Print {"observation", "files"} as JSON.'),
    ) -> None:
        from ibllm_agent.agent.models import ModelPool
        from ibllm_agent.agent.workspace import ThreadWorkspace
        from ibllm_agent.config import get_settings
        from ibllm_agent.errors import ConfigError, ToolRegistryError
        from ibllm_agent.tools import ToolOptions, default_tools
        from ibllm_agent.tools.toolset import TOOL_REQUIREMENTS

        if not workspace.is_dir():
            raise ConfigError(f"workspace folder not found: {workspace}")
        from ibllm_agent.agent.registry import default_registry

        installed = {t.name: t for t in default_registry().tools()}  # entry-point tools win, as in the agent
        if name not in TOOL_REQUIREMENTS and name not in installed:
            known = [*installed, *(n for n in TOOL_REQUIREMENTS if n not in installed)]
            raise ToolRegistryError(f"no tool named {name!r}; tools: {', '.join(known)}")
        settings = get_settings(device=device)
        generator = None
        if "generator" in TOOL_REQUIREMENTS.get(name, ()) and model is not None:
            from ibllm_agent.agent.chat_loading import load_chat_model

            generator = load_chat_model(model, device=device).model  # names, folders: ibllm_agent.load_model
        options = ToolOptions(steps=steps, seed=seed)
        tools = {t.name: t for t in default_tools(settings, generator=generator, options=options,
                                                  loaders=TOOL_LOADERS)}
        tools.update(installed)
        ws = ThreadWorkspace(workspace.expanduser().absolute(), "cli")
        pool = ModelPool(device=settings.device or "auto")
        observation, files = invoke_tool(tools[name], action_input, ws, pool)
        if json_out:
            typer.echo(json.dumps({"observation": observation, "files": files}, ensure_ascii=False, indent=2))
        else:
            typer.echo(observation)
