"""``ibllm-agent demo``: a scripted multi-turn agent session, printed as it streams.

One thread, three turns, on the shipped demo model by default (``--model``):

1. a generated image and a generated speech clip are attached and the user asks what the recording
   says: the model writes its Thought/Action; ``Transcribe Speech From Audio`` runs Whisper when its
   weights are in the weights dir, and without them the observation says which file is missing and
   how to fetch it, and the answer passes that on;
2. the user asks for the image's edges: ``Edge Detection On Image`` (OpenCV Canny: no weights) runs
   for real and the answer names the file it saved;
3. a follow-up the model answers from the conversation memory (the chat model shows it the last
   exchange, as GPT4Tools did).

Each model step is printed as ``Thought/Action/Action Input`` when it completes, each tool result as
``Observation:``, and the answer token by token. Files go to a temporary workspace (``--workspace``
keeps them).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

TURNS = (
    "What does the speaker say in {audio}?",
    "Detect the edges of {image}.",
    "Remind me what you found.",
)


def demo_media(folder: Path, seed: int = 0) -> tuple[tuple[Path, str], tuple[Path, str]]:
    """A seeded synthetic image (coloured shapes) and speech-like clip, with their captions."""
    from ibllm_agent.training.synthetic.media import image_scene, render
    from ibllm_agent.training.synthetic.text import caption

    rng = random.Random(f"demo-{seed}")
    image = image_scene(rng)
    audio = {"modality": "audio", "sound": "speech", "voice": rng.choice(["low", "high"]), "syllables": 5}
    folder.mkdir(parents=True, exist_ok=True)
    image_path, audio_path = folder / "shapes.png", folder / "speech.wav"
    image_path.write_bytes(render(image, seed))
    audio_path.write_bytes(render(audio, seed))
    return (image_path, caption(image)), (audio_path, caption(audio))


def demo_tools(chat: Any) -> list[Any]:
    """Every built-in tool, transcription included (those without weights answer with what is missing)."""
    from ibllm_agent.tools import default_tools

    return default_tools(generator=getattr(chat, "model", None))


def print_turn(agent: Any, thread: str, text: str, attachments: list[Any], echo=None) -> Any:
    """Run one turn and print it as it streams; returns the ``TurnResult``."""
    from ibllm_agent import protocol as P

    echo = echo or (lambda s, end="\n": (sys.stdout.write(s + end), sys.stdout.flush()))
    echo(f"Human: {text}")
    result, answering = None, False
    for event in agent.stream_turn(thread, text, attachments):
        if event.kind == "tool_call":
            if event.status == "invalid":
                echo(f"(invalid step: {event.args.get('raw') if event.args else ''})")
            else:
                echo(f"{P.THOUGHT_YES}\nAction: {event.name}\nAction Input: "
                     f"{P.render_action_input(event.args or {})}")
        elif event.kind == "tool_result":
            echo(f"Observation: {event.text}")
        elif event.kind == "token":
            if not answering:
                echo(f"{P.THOUGHT_NO}\nAI: ", end="")
                answering = True
            echo(event.text, end="")
        elif event.kind == "done":
            result = event.result
    echo("\n")
    return result


def run_demo(model: Any, workspace: Path, seed: int = 0, echo=None) -> list[Any]:
    """The whole session (see module docstring); returns the three ``TurnResult``s. ``model``: a
    ``--model`` value or anything ``build_agent`` takes (a ``TextGenerator``, a chat model)."""
    from ibllm_agent.agent import build_agent
    from ibllm_agent.agent.runtime import load_chat_model

    (image, image_caption), (audio, audio_caption) = demo_media(workspace / "inputs", seed)
    chat = load_chat_model(model)
    agent = build_agent(chat, tools=demo_tools(chat), memory="memory", workspace=workspace / "threads")
    results = []
    with agent:
        _, image_block = agent.attach("demo", image, "image", description=image_caption)
        _, audio_block = agent.attach("demo", audio, "audio", description=audio_caption)
        names = {"image": image_block["extras"]["name"], "audio": audio_block["extras"]["name"]}
        for i, template in enumerate(TURNS):
            attachments = [image_block, audio_block] if i == 0 else []  # announced with turn 1
            results.append(print_turn(agent, "demo", template.format(**names), attachments, echo))
    return results


def register(app: typer.Typer) -> None:
    @app.command("demo", help="Run a scripted multi-turn agent session (image + audio, tools, memory), "
                              "printed as it streams.")
    def demo(
        model: str = typer.Option("demo", "--model", help="Model: 'demo' (shipped), 'official', 'auto', a "
                                  "model folder or 'tiny'."),
        workspace: Path | None = typer.Option(None, "--workspace", help="Keep the session's files here "
                                              "(default: a temporary folder, removed afterwards)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generated image and audio clip."),
    ) -> None:
        if workspace is not None:
            run_demo(model, workspace, seed)
            typer.echo(f"files: {workspace}", err=True)
            return
        with tempfile.TemporaryDirectory(prefix="ibllm-demo-") as tmp:
            run_demo(model, Path(tmp), seed)
