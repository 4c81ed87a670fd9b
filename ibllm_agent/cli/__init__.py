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

def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("ibllm-agent")
    except PackageNotFoundError:  # running from a source tree that was never installed
        number = "unknown (not installed)"
    typer.echo(f"ibllm-agent {number}")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


# Order here is the order in --help.
_COMMAND_MODULES = [
    "chat", "run", "tool", "serve", "ui", "train", "cache", "convert", "eval", "demo", "pull", "download", "info",
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
