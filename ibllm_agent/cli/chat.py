"""``ibllm-agent chat``: an interactive multi-turn session with streaming answers.

Commands inside the session:

    /attach PATH [MODALITY]  attach a file to the next message (image, audio, video, point cloud, …)
    /tools                   list the tools the model can call
    /history                 show this thread as it was streamed (questions, tool calls, answers)
    /threads                 list stored threads, newest first, with their first message as title
    /thread [ID]             show the current thread, or switch to (or start) thread ID; an
                             interrupted turn is repaired
    /reset                   forget this thread (messages and files) and start it empty
    /help                    this list
    /quit                    leave (also Ctrl-D, or Ctrl-C twice at the prompt)

Line editing and Up/Down history come from readline (kept in <workspace>/.chat_history). Model
output is printed with control characters escaped (a stray carriage return shows as \\r).
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
    DTYPE_OPT,
    EXPERTS_OPT,
    MAX_NEW_TOKENS_OPT,
    MAX_OBSERVATION_OPT,
    MEMORY_OPT,
    MODEL_OPT,
    NO_TOOLS_OPT,
    SEED_OPT,
    SYSTEM_OPT,
    TEMPERATURE_OPT,
    THREAD_OPT,
    TOOL_OPT,
    TOOL_TIMEOUT_OPT,
    TOP_P_OPT,
    TURN_WAIT_OPT,
    WORKSPACE_OPT,
    generation_options,
    make_agent,
)
from ibllm_agent.cli.terminal import LineEditor, printable

HELP = __doc__.split("Commands inside the session:\n\n", 1)[1].rstrip()
PROMPT = "you> "
HISTORY_FILE = ".chat_history"  # input lines (Up/Down recall), under the workspace folder
MAX_THREADS_LISTED = 50


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for b in content or []:
        if isinstance(b, str):
            parts.append(b)
        elif isinstance(b, dict) and b.get("type") == "text":
            parts.append(b.get("text", ""))
        elif isinstance(b, dict):
            parts.append(f"[{(b.get('extras') or {}).get('name', b.get('type'))}]")
    return " ".join(p for p in parts if p)


def _history_lines(agent: Any, thread_id: str) -> list[str]:
    """The thread as the session showed it while streaming: questions, tool calls and results,
    answers — not the model's raw protocol text behind a tool call."""
    lines = []
    for m in agent.history(thread_id):
        kind = getattr(m, "type", "?")
        if kind == "human":
            lines.append(f"you: {printable(_text(m.content))}")
        elif kind == "ai":
            for c in m.tool_calls:
                lines.append(f"  [tool] {printable(c['name'])} {printable(str(c['args']))}")
            for c in getattr(m, "invalid_tool_calls", None) or []:
                lines.append(f"  [invalid step] {printable(c.get('name') or '(no tool named)')}")
            if not m.tool_calls and not getattr(m, "invalid_tool_calls", None):
                lines.append(f"ai> {printable(_text(m.content))}")
        elif kind == "tool":
            lines.append(f"  [{getattr(m, 'status', 'success')}] {printable(_text(m.content))}")
    return lines


def thread_title(agent: Any, thread_id: str, width: int = 60) -> str:
    """A thread's first message, on one line and cut to ``width`` characters."""
    first = next((m for m in agent.history(thread_id) if getattr(m, "type", "") == "human"), None)
    text = " ".join(printable(_text(first.content)).split()) if first is not None else "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


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
            self.echo("\n".join(_history_lines(self.agent, self.thread_id)) or "(empty thread)")
        elif cmd == "/threads":
            infos = self.agent.threads()
            if not infos:
                self.echo("(no stored threads)")
            for info in infos[:MAX_THREADS_LISTED]:
                mark = "*" if info.thread_id == self.thread_id else " "
                self.echo(f"{mark} {printable(info.thread_id)}  {info.updated_at[:19]}  "
                          f"{thread_title(self.agent, info.thread_id)}")
            if len(infos) > MAX_THREADS_LISTED:
                self.echo(f"  (+{len(infos) - MAX_THREADS_LISTED} older threads)")
        elif cmd == "/thread" and not args:
            count = len(self.agent.history(self.thread_id))
            self.echo(f"thread {self.thread_id} ({count} messages): {thread_title(self.agent, self.thread_id)}")
        elif cmd == "/thread":
            if len(args) != 1:
                self.echo("usage: /thread [ID]")
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
                self.out.write(printable(event.text))  # model text: no cursor moves, no escapes
                self.out.flush()
                streamed = True
            elif event.kind == "tool_call" and event.status == "invalid":
                self.echo(f"\n  [invalid step] {printable(event.name or '(no tool named)')}")
            elif event.kind == "tool_call":
                self.echo(f"\n  [tool] {printable(str(event.name))} {printable(str(event.args))}")
            elif event.kind == "tool_result":
                self.echo(f"  [{event.status}] {printable(event.text)}")
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
        dtype: str | None = DTYPE_OPT,
        cache: Path | None = CACHE_OPT,
        experts: bool = EXPERTS_OPT,
        tool_timeout: float = TOOL_TIMEOUT_OPT,
        max_observation_chars: int = MAX_OBSERVATION_OPT,
        turn_wait: float = TURN_WAIT_OPT,
        max_new_tokens: int | None = MAX_NEW_TOKENS_OPT,
        temperature: float | None = TEMPERATURE_OPT,
        top_p: float | None = TOP_P_OPT,
        seed: int | None = SEED_OPT,
        system: str | None = SYSTEM_OPT,
    ) -> None:
        from ibllm_agent.agent.limits import AgentLimits
        from ibllm_agent.errors import IbllmError

        limits = AgentLimits(tool_timeout, max_observation_chars, turn_wait)
        agent = make_agent(model, memory, workspace, tool, no_tools, max_steps, device, cache, limits,
                           generation_options(max_new_tokens, temperature, top_p, seed), system,
                           experts=experts, dtype=dtype)
        session = ChatSession(agent, thread or uuid.uuid4().hex[:12])
        with agent:
            if thread:
                n = agent.repair(session.thread_id)
                if n:
                    session.echo(f"repaired {n} interrupted tool call(s)")
            session.echo(f"thread {session.thread_id} — /help for commands, /quit to leave")
            editor = LineEditor(agent.workspace.root / HISTORY_FILE)
            asked_to_leave = False
            while True:
                try:
                    line = editor.read(PROMPT)
                except EOFError:
                    session.echo()
                    break
                except KeyboardInterrupt:
                    # Ctrl-C at the prompt asks first: a stray one must not end a long session.
                    if asked_to_leave:
                        session.echo("\nbye")
                        break
                    session.echo("\n(Ctrl-C again, Ctrl-D or /quit leaves the chat)")
                    asked_to_leave = True
                    continue
                asked_to_leave = False
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
            editor.save()
