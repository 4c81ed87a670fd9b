"""``ibllm-agent run``: one agent turn from the command line (optionally continuing a thread).

    ibllm-agent run "What is in this picture?" --image cat.jpg --model DIR
    ibllm-agent run "Now remove the cat." --thread t1 --json

``--json`` prints ``{"thread_id", "answer", "tool_calls": [{name, args, output, status}], "files",
"attachments", "stop_reason", "workspace"}`` (plus ``"grounding"`` with ``--ground``, the detection
cascade: ``{"image", "nouns", "found", "missing", "file", "summary"}``). ``--model scripted:outputs.json`` replays a JSON list
of model outputs (a testing aid: the CLI without weights).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import typer

MODEL_HELP = (
    "A saved model folder, 'demo' (the converted official model in <weights_dir>/demo), 'tiny' (random "
    "tiny model, for smoke tests) or 'scripted:FILE.json' (replays a JSON list of outputs; testing aid)."
)


def resolve_model_spec(spec: str) -> str:
    """``demo`` → the folder ``<weights_dir>/demo``; other specs unchanged."""
    from ibllm_agent.errors import ConfigError

    if spec != "demo":
        return spec
    from ibllm_agent.config import get_settings

    folder = Path(get_settings().weights_dir) / "demo"
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"the demo model is not installed: expected a model folder at {folder}. Convert the official "
            f"checkpoint into it (ibllm-agent download imagebind_llm_7b llama_7b, then ibllm-agent convert "
            f"--official ... --llama-dir ... --out {folder}), or pass --model DIR|tiny"
        )
    return str(folder)


# Options shared by `run` and `chat` (typer reads these as parameter defaults in both commands).
MODEL_OPT = typer.Option("demo", "--model", help=MODEL_HELP)
THREAD_OPT = typer.Option(None, "--thread", help="Thread id to continue (default: new).")
MEMORY_OPT = typer.Option(
    None, "--memory", help="sqlite:///PATH (default, under the workspace), postgres://… or memory."
)
WORKSPACE_OPT = typer.Option(None, "--workspace", help="Root folder for thread files.")
TOOL_OPT = typer.Option([], "--tool", help="Use only this registered tool (repeatable).")
NO_TOOLS_OPT = typer.Option(False, "--no-tools", help="Plain chat without tools.")
DEVICE_OPT = typer.Option(None, "--device", help="Device for tool models (auto/cpu/cuda).")
EXPERTS_OPT = typer.Option(
    False, "--experts/--no-experts",
    help="Run the context experts on attachments: Whisper speech-to-text on audio, the video object "
    "detector on video; their findings go before the prompt as (recognized text: …) / (detected object "
    "classes: …). Needs the whisper_tiny and groundingdino_swint_ogc weights.",
)
CACHE_OPT = typer.Option(
    None, "--cache", help="Visual-cache folder (ibllm-agent cache build) for cache-enhanced encoding "
    "(default: the visual_cache setting, env IBLLM_VISUAL_CACHE)."
)


def make_agent(
    model: str,
    memory: str | None,
    workspace: Path | None,
    tools: list[str],
    no_tools: bool,
    max_steps: int,
    device: str | None,
    cache: Path | None = None,
    experts: bool = False,
) -> Any:
    """Build the CLI's agent (heavy imports happen here, not at CLI start-up)."""
    from ibllm_agent.agent import build_agent
    from ibllm_agent.config import get_settings

    settings = get_settings(workspace_dir=workspace, memory_url=memory, device=device, visual_cache=cache)
    tool_spec: Any = [] if no_tools else (list(tools) or None)
    return build_agent(
        resolve_model_spec(model),
        tools=tool_spec,
        memory=settings.memory_url,
        workspace=settings.workspace_dir,
        max_steps=max_steps,
        device=settings.device,
        cache_dir=settings.visual_cache,
        experts=experts or None,
    )


def _ground(agent: Any, result: Any) -> Any:
    from ibllm_agent.cli.tool import TOOL_LOADERS
    from ibllm_agent.tools.cascade import ground_turn

    return ground_turn(agent, result, loaders=TOOL_LOADERS)


def _attachments(**by_modality: list[Path]) -> list[tuple[Path, str]]:
    return [(p, modality) for modality, paths in by_modality.items() for p in paths]


def register(app: typer.Typer) -> None:
    @app.command("run", help="Run one agent turn: a prompt plus optional media; prints the answer.")
    def run(
        prompt: str = typer.Argument(..., help="What to ask."),
        image: list[Path] = typer.Option([], "--image", help="Attach an image (repeatable)."),
        audio: list[Path] = typer.Option([], "--audio", help="Attach an audio file (repeatable)."),
        video: list[Path] = typer.Option([], "--video", help="Attach a video (repeatable)."),
        point: list[Path] = typer.Option([], "--point", help="Attach a 3D point cloud (repeatable)."),
        depth: list[Path] = typer.Option([], "--depth", help="Attach a depth map (repeatable)."),
        thermal: list[Path] = typer.Option([], "--thermal", help="Attach a thermal image (repeatable)."),
        imu: list[Path] = typer.Option([], "--imu", help="Attach an IMU recording .npy (repeatable)."),
        model: str = MODEL_OPT,
        thread: str | None = THREAD_OPT,
        memory: str | None = MEMORY_OPT,
        workspace: Path | None = WORKSPACE_OPT,
        tool: list[str] = TOOL_OPT,
        no_tools: bool = NO_TOOLS_OPT,
        max_steps: int = typer.Option(8, "--max-steps", min=1, help="Tool steps allowed in the turn."),
        device: str | None = DEVICE_OPT,
        cache: Path | None = CACHE_OPT,
        experts: bool = EXPERTS_OPT,
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        ground: bool = typer.Option(
            False, "--ground", help="Detection cascade: find the answer's nouns in the image with the detector "
            "and save the annotated image (needs the groundingdino_swint_ogc weights)."
        ),
    ) -> None:
        thread_id = thread or uuid.uuid4().hex[:12]
        files = _attachments(image=image, audio=audio, video=video, point=point, depth=depth,
                             thermal=thermal, imu=imu)
        agent = make_agent(model, memory, workspace, tool, no_tools, max_steps, device, cache, experts)
        with agent:
            if json_out:
                result = agent.send(thread_id, prompt, files)
                data = result.to_dict()
                data["workspace"] = str(agent.workspace.thread(thread_id).root)
                if ground:
                    data["grounding"] = _ground(agent, result)
                import json

                typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
                return
            result = None
            for event in agent.stream_turn(thread_id, prompt, files):
                if event.kind == "token":
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif event.kind == "tool_call" and event.status == "invalid":
                    typer.echo(f"\n[invalid step] {event.name or '(no tool named)'}", err=True)
                elif event.kind == "tool_call":
                    typer.echo(f"\n[tool] {event.name} {event.args}", err=True)
                elif event.kind == "tool_result":
                    typer.echo(f"[{event.status}] {event.text}", err=True)
                elif event.kind == "done":
                    result = event.result
            sys.stdout.write("\n")
            if result is not None and ground:
                grounding = _ground(agent, result)
                if grounding is None:
                    typer.echo("grounding: no image in this thread", err=True)
                else:
                    where = f" ({grounding['file']})" if grounding["file"] else ""
                    typer.echo(f"grounding: {grounding['summary']}{where}", err=True)
            if result is not None and result.files:
                typer.echo(f"files: {', '.join(result.files)}", err=True)
            typer.echo(f"thread: {thread_id}", err=True)
