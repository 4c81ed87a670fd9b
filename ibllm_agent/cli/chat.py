"""``ibllm-agent chat``: an interactive multi-turn session with streaming answers.

Commands inside the session:

    /attach PATH [MODALITY]  attach a file to the next message (image, audio, video, point cloud, …)
    /tools                   list the tools the model can call
    /history                 show this thread's messages
    /threads                 list stored threads
    /thread ID               switch to (or start) thread ID; an interrupted turn is repaired
    /reset                   forget this thread (messages and files) and start it empty
    /help                    this list
    /quit                    leave (also Ctrl-D)
"""

from __future__ import annotations

import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import typer

from ibllm_agent.cli.run import (
    CACHE_OPT,
    DEVICE_OPT,
    EXPERTS_OPT,
    MEMORY_OPT,
    MODEL_OPT,
    NO_TOOLS_OPT,
    THREAD_OPT,
    TOOL_OPT,
    WORKSPACE_OPT,
    make_agent,
)

HELP = __doc__.split("Commands inside the session:\n\n", 1)[1].rstrip()
PROMPT = "you> "


def _print_history(agent: Any, thread_id: str) -> None:
    messages = agent.history(thread_id)
    if not messages:
        typer.echo("(empty thread)")
    for m in messages:
        kind = getattr(m, "type", "?")
        if kind == "human":
            text = m.content if isinstance(m.content, str) else " ".join(
                b.get("text", "") if b.get("type") == "text" else f"[{(b.get('extras') or {}).get('name', b.get('type'))}]"
                for b in m.content if isinstance(b, dict)
            )
            typer.echo(f"you: {text}")
        elif kind == "ai":
            for c in m.tool_calls:
                typer.echo(f"  [tool call] {c['name']} {c['args']}")
            if m.content:
                typer.echo(f"ai: {m.content if isinstance(m.content, str) else m.text}")
        elif kind == "tool":
            typer.echo(f"  [{getattr(m, 'status', 'success')}] {m.content}")


class ChatSession:
    """The REPL state: the agent, the current thread and attachments waiting for the next message."""

    def __init__(self, agent: Any, thread_id: str, out: Any = None):
        self.agent = agent
        self.thread_id = thread_id
        self.pending: list[dict[str, Any]] = []  # content blocks of stored attachments
        self.out = out or sys.stdout

    def echo(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def command(self, line: str) -> bool:
        """Run a /command; False when the session should end."""
        from ibllm_agent.errors import IbllmError

        try:
            parts = shlex.split(line)
        except ValueError as exc:
            self.echo(f"error: {exc}")
            return True
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in ("/quit", "/exit", "/q"):
            return False
        if cmd == "/help":
            self.echo(HELP)
        elif cmd == "/attach":
            if not args or len(args) > 2:
                self.echo("usage: /attach PATH [image|audio|video|point|depth|thermal|imu|text]")
                return True
            path = Path(args[0]).expanduser()
            try:
                stored, block = self.agent.attach(self.thread_id, path, args[1] if len(args) > 1 else None)
            except IbllmError as exc:
                self.echo(f"error: {exc}")
                return True
            self.pending.append(block)
            self.echo(f"attached {stored.name} ({stored.modality}); it goes with your next message")
        elif cmd == "/tools":
            if not self.agent.tools:
                self.echo("(no tools)")
            for t in self.agent.tools:
                self.echo(f"- {t.name}: {t.description.strip()}")
        elif cmd == "/history":
            _print_history(self.agent, self.thread_id)
        elif cmd == "/threads":
            for info in self.agent.threads():
                mark = "*" if info.thread_id == self.thread_id else " "
                self.echo(f"{mark} {info.thread_id}  {info.updated_at}")
        elif cmd == "/thread":
            if len(args) != 1:
                self.echo("usage: /thread ID")
                return True
            self.thread_id = args[0]
            self.pending.clear()
            n = self.agent.repair(self.thread_id)
            count = len(self.agent.history(self.thread_id))
            note = f"; repaired {n} interrupted tool call(s)" if n else ""
            self.echo(f"thread {self.thread_id} ({count} messages{note})")
        elif cmd == "/reset":
            self.agent.delete_thread(self.thread_id)
            self.pending.clear()
            self.echo(f"thread {self.thread_id} reset")
        else:
            self.echo(f"unknown command {cmd}; /help lists the commands")
        return True

    def ask(self, text: str) -> None:
        """Send a message (with pending attachments), streaming the answer."""
        blocks, self.pending = self.pending, []
        self.echo("ai> ", end="")
        streamed = False
        for event in self.agent.stream_turn(self.thread_id, text, blocks):
            if event.kind == "token":
                self.out.write(event.text)
                self.out.flush()
                streamed = True
            elif event.kind == "tool_call" and event.status == "invalid":
                self.echo(f"\n  [invalid step] {event.name or '(no tool named)'}")
            elif event.kind == "tool_call":
                self.echo(f"\n  [tool] {event.name} {event.args}")
            elif event.kind == "tool_result":
                self.echo(f"  [{event.status}] {event.text}")
                self.echo("ai> ", end="")
            elif event.kind == "done" and event.result is not None and event.result.files:
                self.echo(f"\n  files: {', '.join(event.result.files)}", end="")
        self.echo("" if streamed else "(no answer)")


def register(app: typer.Typer) -> None:
    @app.command("chat", help="Chat with the agent: streaming answers, /attach media, tools, memory.")
    def chat(
        model: str = MODEL_OPT,
        thread: str | None = THREAD_OPT,
        memory: str | None = MEMORY_OPT,
        workspace: Path | None = WORKSPACE_OPT,
        tool: list[str] = TOOL_OPT,
        no_tools: bool = NO_TOOLS_OPT,
        max_steps: int = typer.Option(8, "--max-steps", min=1, help="Tool steps allowed per turn."),
        device: str | None = DEVICE_OPT,
        cache: Path | None = CACHE_OPT,
        experts: bool = EXPERTS_OPT,
    ) -> None:
        from ibllm_agent.errors import IbllmError

        agent = make_agent(model, memory, workspace, tool, no_tools, max_steps, device, cache, experts)
        session = ChatSession(agent, thread or uuid.uuid4().hex[:12])
        with agent:
            if thread:
                n = agent.repair(session.thread_id)
                if n:
                    session.echo(f"repaired {n} interrupted tool call(s)")
            session.echo(f"thread {session.thread_id} — /help for commands, /quit to leave")
            while True:
                try:
                    line = input(PROMPT)
                except (EOFError, KeyboardInterrupt):
                    session.echo()
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    if line.startswith("/"):
                        if not session.command(line):
                            break
                    else:
                        session.ask(line)
                except IbllmError as exc:
                    session.echo(f"\nerror: {exc}")
                except KeyboardInterrupt:  # Ctrl-C stops the turn, not the session
                    session.echo("\n(interrupted)")
                    agent.repair(session.thread_id)
                except Exception as exc:  # keep the session alive; the thread stays consistent
                    session.echo(f"\nerror: {type(exc).__name__}: {exc}")
                    agent.repair(session.thread_id)
