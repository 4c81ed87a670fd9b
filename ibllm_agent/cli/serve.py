"""``ibllm-agent serve``: the OpenAI-compatible HTTP API and the agent's thread endpoint.

    ibllm-agent serve --model DIR --host 127.0.0.1 --port 8000 --api-key "$KEY"
    ibllm-agent serve --model tiny --memory postgresql://user@db/ibllm --workspace /shared/ws

Needs the ``serve`` extra (FastAPI, uvicorn; Postgres support for shared memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def load_generator(spec: str, device: str | None = None, cache: Path | None = None) -> tuple[Any, str]:
    """The ``TextGenerator`` a ``--model`` names, and the id the server lists it under.

    ``tiny`` → the random tiny ImageBind-LLM; ``scripted:FILE.json`` → a ``ScriptedGenerator``
    replaying a JSON list of outputs (testing aid); a model name (``demo``, ``official``, ``auto``) or a folder → the saved model (all through
    ``ibllm_agent.load_model``).
    """
    from ibllm_agent.config import get_settings
    from ibllm_agent.errors import ConfigError

    settings = get_settings(device=device, visual_cache=cache)
    if spec.startswith("scripted:"):
        from ibllm_agent.testing import load_scripted

        return load_scripted(spec), "scripted"
    from ibllm_agent.loading import available_models, load_model

    if spec not in available_models() and not Path(spec).expanduser().is_dir():
        raise ConfigError(f"model {spec!r} is not 'tiny', 'demo', 'scripted:FILE' or an existing model folder")
    # Names (tiny, demo) and folders; device/dtype by the Settings rules; the visual cache goes into the
    # model's media stage.
    model = load_model(spec, settings.device, cache_dir=settings.visual_cache, settings=settings)
    model_id = "imagebind-llm-tiny" if spec == "tiny" else Path(spec).name or spec
    return model, model_id


def register(app: typer.Typer) -> None:
    @app.command("serve", help="Serve the model over HTTP: an OpenAI-compatible chat API (/v1/chat/completions "
                 "with media and tool calls, /v1/models, /health) and the agent's threads (/v1/threads/{id}/messages).")
    def serve(
        model: str = typer.Option("auto", "--model", help=MODEL_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = all)."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        model_id: str | None = typer.Option(None, "--model-id", help="Name clients use in 'model' "
                                            "(default: the preset or folder name)."),
        api_key: list[str] = typer.Option([], "--api-key", envvar="IBLLM_API_KEY",
                                          help="Require Authorization: Bearer KEY on /v1/* (repeatable; env "
                                          "IBLLM_API_KEY, space-separated). Default: no auth."),
        memory: str | None = MEMORY_OPT,
        workspace: Path | None = WORKSPACE_OPT,
        tool: list[str] = TOOL_OPT,
        no_tools: bool = NO_TOOLS_OPT,
        device: str | None = DEVICE_OPT,
        cache: Path | None = CACHE_OPT,
        max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="Requests decoded in one batch."),
        max_queue: int = typer.Option(64, "--max-queue", min=1,
                                      help="Generations waiting for a batch before new requests get 429."),
        max_concurrent: int = typer.Option(64, "--max-concurrent", min=1,
                                           help="Chat requests in progress before new ones get 429."),
        no_batching: bool = typer.Option(False, "--no-batching", help="Decode one request at a time."),
        max_body_mb: float = typer.Option(32.0, "--max-body-mb", min=0.001, help="Larger request bodies get 413."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1,
                                           help="Completion budget when a request sets no max_tokens."),
        agent_workers: int = typer.Option(4, "--agent-workers", min=1, help="Agent turns running at once."),
        max_steps: int = typer.Option(8, "--max-steps", min=1, help="Tool steps per agent turn."),
        allow_private_network: bool = typer.Option(
            False, "--allow-private-network",
            help="Let clients' media URLs point at loopback/private addresses (trusted networks only)."),
        shutdown_timeout: float = typer.Option(
            30.0, "--shutdown-timeout", min=0, help="Seconds in-flight requests get to finish on SIGTERM/Ctrl-C."),
    ) -> None:
        import uvicorn

        from ibllm_agent.config import get_settings
        from ibllm_agent.serve import ServeConfig, create_app
        from ibllm_agent.serve.safety import RemotePolicy

        generator, default_id = load_generator(model, device, cache)
        settings = get_settings(workspace_dir=workspace, memory_url=memory)
        keys = tuple(k for entry in api_key for k in entry.split())
        config = ServeConfig(
            model_id=model_id or default_id, api_keys=keys, max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_batch_size=max_batch_size, batching=not no_batching, max_queue=max_queue,
            max_concurrent=max_concurrent, max_new_tokens=max_new_tokens,
            remote=RemotePolicy(allow_private_network=allow_private_network),
            memory_url=settings.memory_url, workspace_dir=settings.workspace_dir,
            agent_tools=tool_choice(tool, no_tools), agent_workers=agent_workers, max_steps=max_steps,
        )
        typer.echo(f"serving {config.model_id!r} on http://{host}:{port} (auth: {'on' if keys else 'off'})", err=True)
        app = create_app(generator, config)

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # From the first signal on, new requests on open keep-alive connections get 503 while
                # the in-flight ones finish.
                app.state.ibllm.closing = True
                super().handle_exit(sig, frame)

        Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                              timeout_graceful_shutdown=shutdown_timeout)).run()
