"""``ibllm-agent run``: one agent turn from the command line (optionally continuing a thread).

    ibllm-agent run "What is in this picture?" --image cat.jpg --model DIR
    ibllm-agent run "Now remove the cat." --thread t1 --json

``--json`` prints ``{"thread_id", "answer", "tool_calls": [{name, args, output, status}], "files",
"attachments", "stop_reason", "workspace", "visual_cache": {"folder", "applied", "k", "t", "alpha",
"reason"}}`` (plus ``"grounding"`` with ``--ground``, the detection cascade: ``{"image", "nouns",
"found", "missing", "file", "summary"}``). ``--model scripted:outputs.json`` replays a JSON list
of model outputs (a testing aid: the CLI without weights).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import typer

MODEL_HELP = (
    "'auto' (default: 'official' when converted, else 'demo'), 'demo' (the small model trained by our own "
    "pipeline, shipped in the package), 'official' (the converted official 7B in <weights_dir>/official), "
    "a saved model folder, 'tiny' (random tiny model, for smoke tests) or 'scripted:FILE.json' (replays a "
    "JSON list of outputs; testing aid)."
)


# Options shared by `run` and `chat` (typer reads these as parameter defaults in both commands).
MODEL_OPT = typer.Option("auto", "--model", help=MODEL_HELP)
THREAD_OPT = typer.Option(None, "--thread", help="Thread id to continue (default: new).")
MEMORY_OPT = typer.Option(
    None, "--memory", help="sqlite:///PATH (default, under the workspace), postgres://… or memory."
)
WORKSPACE_OPT = typer.Option(None, "--workspace", help="Root folder for thread files.")
TOOL_OPT = typer.Option([], "--tool", help="Use only this registered tool (repeatable).")
NO_TOOLS_OPT = typer.Option(False, "--no-tools", help="Plain chat without tools.")
DEVICE_OPT = typer.Option(
    None, "--device", help="Device for the model and the tool models: auto, cpu, cuda, cuda:N (default: the device "
    "setting, env IBLLM_DEVICE; auto = cuda when available)."
)
DTYPE_OPT = typer.Option(
    None, "--dtype", help="Model precision: auto, fp32, bf16, fp16 (default: the dtype setting, env IBLLM_DTYPE; "
    "auto = bf16/fp16 on cuda, fp32 on cpu)."
)
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


TOOL_TIMEOUT_OPT = typer.Option(
    300.0, "--tool-timeout", min=0, help="Seconds a tool call may run before the model gets a time-limit "
    "error observation and the turn goes on (0: no limit)."
)
MAX_OBSERVATION_OPT = typer.Option(
    4000, "--max-observation-chars", min=200, help="Tool output longer than this is cut, with a note to the model."
)
TURN_WAIT_OPT = typer.Option(
    120.0, "--turn-wait", min=0, help="Seconds to wait for a turn already running on the same thread "
    "(also in another process) before refusing this one (0: refuse at once)."
)


# Generation controls shared by `run` and `chat` (None: the model's own default).
MAX_NEW_TOKENS_OPT = typer.Option(None, "--max-new-tokens", min=1, help="Most tokens generated per model step.")
TEMPERATURE_OPT = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (0: greedy; default 0.1).")
TOP_P_OPT = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (default 0.75).")
SEED_OPT = typer.Option(None, "--seed", help="Random seed: the same seed, prompt and media give the same answer.")
SYSTEM_OPT = typer.Option(None, "--system", help="A system message put before the conversation.")


def generation_options(max_new_tokens: int | None, temperature: float | None, top_p: float | None,
                       seed: int | None) -> dict[str, Any]:
    """The chat-model fields the generation flags set (flags not given are left out)."""
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    return {k: v for k, v in given.items() if v is not None}


def tool_choice(tools: list[str], no_tools: bool) -> list[str] | None:
    """``build_agent(tools=)`` from ``--tool`` / ``--no-tools``: ``[]`` = none, ``None`` = the defaults."""
    return [] if no_tools else (list(tools) or None)


def make_agent(
    model: str,
    memory: str | None,
    workspace: Path | None,
    tools: list[str],
    no_tools: bool,
    max_steps: int,
    device: str | None,
    cache: Path | None = None,
    limits: Any = None,
    chat_options: dict[str, Any] | None = None,
    system: str | None = None,
    experts: bool = False,
    dtype: str | None = None,
) -> Any:
    """Build the CLI's agent (heavy imports happen here, not at CLI start-up). Settings, memory
    file, cache folder, device and model spec are checked first, before anything loads."""
    from ibllm_agent.cli.preflight import check_settings
    from ibllm_agent.config import get_settings

    settings = get_settings(workspace_dir=workspace, memory_url=memory, device=device, dtype=dtype,
                            visual_cache=cache)
    check_settings(settings, model)
    from ibllm_agent.agent import build_agent

    return build_agent(
        model,  # a name of ibllm_agent.load_model ('demo', 'tiny'), a folder or scripted:FILE
        tools=tool_choice(tools, no_tools),
        memory=settings.memory_url,
        workspace=settings.workspace_dir,
        max_steps=max_steps,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.visual_cache,
        limits=limits,
        chat_options=chat_options,
        system_prompt=system,
        experts=experts or None,
    )


def check_attachments(weights: str | None, **by_modality: list[str]) -> list[Any]:
    """``--image``/``--audio``/… values checked (before any model loads) with their ``--weights``."""
    from ibllm_agent.cli.preflight import check_attachment, parse_weights

    given = [(v, modality) for modality, values in by_modality.items() for v in values]
    fusion = parse_weights(weights, len(given))
    return [check_attachment(v, modality, w) for (v, modality), w in zip(given, fusion, strict=True)]


def attach_all(agent: Any, thread_id: str, attachments: list[Any], weighted: bool) -> list[dict[str, Any]]:
    """Store the checked attachments in the thread's workspace (URLs fetched first) and return their
    content blocks, each with its fusion weight; say so when several inputs are fused."""
    blocks = []
    for a in attachments:
        source: Any = Path(a.source)
        if a.is_url:  # http(s) only, size and time limits of the library content policy
            from ibllm_agent.content import ContentPolicy, fetch

            source = fetch(a.source, ContentPolicy.library())
        stored, block = agent.attach(thread_id, source, a.modality)
        if weighted:
            block["extras"]["weight"] = a.weight
        blocks.append(block)
    if len(blocks) > 1:
        parts = " + ".join(f"{b['extras']['name']} ×{a.weight:g}" for a, b in zip(attachments, blocks, strict=True))
        typer.echo(f"note: {len(blocks)} inputs are fused into one embedding ({parts}); "
                   "the model sees their weighted mix, not each one", err=True)
    return blocks


def cache_report(agent: Any, attachments: list[Any]) -> dict[str, Any]:
    """Whether the visual cache enhanced this turn's media, and with which knobs (for ``--json``)."""
    chat = agent.chat_model
    folder = getattr(chat, "cache_dir", None)
    enabled = bool(folder) and bool(getattr(chat, "cache_enabled", False))
    report: dict[str, Any] = {"folder": folder, "applied": enabled and bool(attachments)}
    if enabled:
        report.update(k=chat.cache_k, t=chat.cache_t, alpha=chat.cache_alpha)
    report["reason"] = ("no visual cache set (--cache / IBLLM_VISUAL_CACHE)" if not folder
                        else "cache disabled" if not enabled
                        else "no media in this turn" if not attachments
                        else "each media embedding mixed with its k nearest cached image features")
    return report


def _ground(agent: Any, result: Any) -> Any:
    from ibllm_agent.cli.tool import TOOL_LOADERS
    from ibllm_agent.tools.cascade import ground_turn

    return ground_turn(agent, result, loaders=TOOL_LOADERS)


def register(app: typer.Typer) -> None:
    @app.command("run", help="Run one agent turn: a prompt plus optional media; prints the answer.")
    def run(
        prompt: str = typer.Argument(..., help="What to ask."),
        image: list[str] = typer.Option([], "--image", help="Attach an image file or http(s) URL (repeatable)."),
        audio: list[str] = typer.Option([], "--audio", help="Attach an audio file or URL (repeatable)."),
        video: list[str] = typer.Option([], "--video", help="Attach a video file or URL (repeatable)."),
        point: list[str] = typer.Option([], "--point", help="Attach a 3D point cloud (repeatable)."),
        depth: list[str] = typer.Option([], "--depth", help="Attach a depth map (repeatable)."),
        thermal: list[str] = typer.Option([], "--thermal", help="Attach a thermal image (repeatable)."),
        imu: list[str] = typer.Option([], "--imu", help="Attach an IMU recording .npy/.csv (repeatable)."),
        weights: str | None = typer.Option(
            None, "--weights", help="Fusion weights of the attachments in the order given, e.g. 0.7,0.3 "
            "(several inputs become one weighted embedding; default 1 each)."),
        model: str = MODEL_OPT,
        thread: str | None = THREAD_OPT,
        memory: str | None = MEMORY_OPT,
        workspace: Path | None = WORKSPACE_OPT,
        tool: list[str] = TOOL_OPT,
        no_tools: bool = NO_TOOLS_OPT,
        max_steps: int = typer.Option(8, "--max-steps", min=1, help="Tool steps allowed in the turn."),
        device: str | None = DEVICE_OPT,
        dtype: str | None = DTYPE_OPT,
        cache: Path | None = CACHE_OPT,
        experts: bool = EXPERTS_OPT,
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        tool_timeout: float = TOOL_TIMEOUT_OPT,
        max_observation_chars: int = MAX_OBSERVATION_OPT,
        turn_wait: float = TURN_WAIT_OPT,
        max_new_tokens: int | None = MAX_NEW_TOKENS_OPT,
        temperature: float | None = TEMPERATURE_OPT,
        top_p: float | None = TOP_P_OPT,
        seed: int | None = SEED_OPT,
        system: str | None = SYSTEM_OPT,
        ground: bool = typer.Option(
            False, "--ground", help="Detection cascade: find the answer's nouns in the image with the detector "
            "and save the annotated image (needs the groundingdino_swint_ogc weights)."
        ),
    ) -> None:
        from ibllm_agent.agent.limits import AgentLimits

        thread_id = thread or uuid.uuid4().hex[:12]
        attachments = check_attachments(weights, image=image, audio=audio, video=video, point=point,
                                        depth=depth, thermal=thermal, imu=imu)
        limits = AgentLimits(tool_timeout, max_observation_chars, turn_wait)
        agent = make_agent(model, memory, workspace, tool, no_tools, max_steps, device, cache, limits,
                           generation_options(max_new_tokens, temperature, top_p, seed), system,
                           experts=experts, dtype=dtype)
        with agent:
            files = attach_all(agent, thread_id, attachments, weighted=weights is not None)
            if json_out:
                result = agent.send(thread_id, prompt, files)
                data = result.to_dict()
                data["workspace"] = str(agent.workspace.thread(thread_id).root)
                data["visual_cache"] = cache_report(agent, files)
                if ground:
                    data["grounding"] = _ground(agent, result)
                import json

                typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
                return
            result = None
            from ibllm_agent.cli.terminal import printable

            # On a terminal, model text is shown with control characters escaped (no cursor moves).
            shown = printable if sys.stdout.isatty() else str
            for event in agent.stream_turn(thread_id, prompt, files):
                if event.kind == "token":
                    sys.stdout.write(shown(event.text))
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
