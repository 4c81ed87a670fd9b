"""The ``ibllm-agent`` command line.

One module per subcommand (or group) under ``ibllm_agent/cli/``; each exposes ``register(app)``.
Modules import heavy libraries (torch, transformers, langchain) inside their command functions so
``ibllm-agent --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="ibllm-agent",
    help="ImageBind-LLM agent: chat with images, audio, video and 3D point clouds, with tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order here is the order in --help.
_COMMAND_MODULES = [
    "chat", "run", "tool", "serve", "ui", "train", "cache", "convert", "eval", "demo", "download", "info",
]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ibllm_agent.cli.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet; tests list them all
            if exc.name != f"ibllm_agent.cli.{name}":
                raise
            continue
        module.register(app)


def main() -> None:
    """Console-script entry point; typed errors print as one line and exit 2."""
    from ibllm_agent.errors import IbllmError

    _register_all()
    try:
        app()
    except IbllmError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
