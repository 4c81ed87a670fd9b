"""``ibllm-agent download NAME...``: fetch official checkpoints into the weights directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ibllm_agent.errors import IbllmError


def _epilog() -> str:
    from ibllm_agent.weights import WEIGHTS

    return "Names: " + ", ".join(WEIGHTS) + ". `ibllm-agent info` shows which are present."


def register(app: typer.Typer) -> None:
    @app.command(name="download", epilog=_epilog())
    def download_command(
        names: Annotated[
            list[str],
            typer.Argument(help="Registry names to fetch (see the list below).", show_default=False),
        ],
        weights_dir: Annotated[
            Path | None,
            typer.Option("--weights-dir", help="Target folder (default: settings / IBLLM_WEIGHTS_DIR)."),
        ] = None,
        config: Annotated[Path | None, typer.Option("--config", help="TOML settings file to read.")] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Download again even if the files are present.")
        ] = False,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
        ] = True,
        retries: Annotated[
            int, typer.Option(min=0, help="Retries after a network error (resuming each time).")
        ] = 3,
        timeout: Annotated[float, typer.Option(min=1.0, help="Connect/read timeout in seconds.")] = 30.0,
    ) -> None:
        """Download official checkpoints (resumable, checksum-verified).

        Each file goes to <weights-dir>/<path> through a .part file that is renamed into place only once complete and verified; an interrupted download resumes when run again. Files hosted on the Hugging Face Hub go through huggingface_hub instead (checked against the Hub's size and sha256/ETag; HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE apply; --retries does not).

        Exit code 1 when any download failed (the others still run), 2 for an unknown name.
        """
        from ibllm_agent.config import get_settings
        from ibllm_agent.download import fetch_weight
        from ibllm_agent.weights import get_spec

        try:
            settings = get_settings(weights_dir=weights_dir, config_file=config)
            for name in names:  # unknown names fail before anything is fetched
                get_spec(name)
        except IbllmError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        failed: list[str] = []
        for name in dict.fromkeys(names):
            try:
                path = fetch_weight(
                    name,
                    settings,
                    force=force,
                    progress=progress,
                    retries=retries,
                    timeout=timeout,
                    echo=lambda msg: typer.echo(msg, err=True),
                )
            except IbllmError as exc:
                typer.echo(f"error: {exc}", err=True)
                failed.append(name)
                continue
            typer.echo(f"{name}: {path}")
        if failed:
            typer.echo(f"failed: {', '.join(failed)}", err=True)
            raise typer.Exit(1)
