"""Subcommands whose implementation lands in a later release.

They are registered now so ``ibllm-agent --help`` shows the whole command surface, but running one
only prints that it is not available yet and exits with code 2: no partial or simulated behaviour.
"""

from __future__ import annotations

import typer

NOT_AVAILABLE_EXIT_CODE = 2


def register_planned(app: typer.Typer, name: str, summary: str, planned: str) -> None:
    """Add command ``name`` with help ``summary`` + ``planned``; running it exits 2 with one line."""

    def command(ctx: typer.Context) -> None:
        typer.echo(
            f"error: `ibllm-agent {name}` is not available in this release yet ({summary.rstrip('.')}).",
            err=True,
        )
        raise typer.Exit(NOT_AVAILABLE_EXIT_CODE)

    command.__doc__ = f"{summary}\n\nNot available in this release yet. Planned: {planned}"
    app.command(
        name=name,
        # Any arguments are accepted so that every invocation gets the same one-line answer.
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        short_help=f"{summary.rstrip('.')} (not available yet).",
    )(command)
