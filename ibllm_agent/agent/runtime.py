"""``build_agent``: a LangChain ``create_agent`` graph with memory, a media workspace and tools.

::

    from ibllm_agent import build_agent

    agent = build_agent("tiny", memory="sqlite:///chat.sqlite")          # or a chat model / generator
    r = agent.send("t1", "What is in this picture?", attachments=["cat.jpg"])
    r.answer, r.tool_calls, r.files
    agent.send("t1", "And now make it look like a painting.")          # same thread, remembered

    # The plain LangGraph graph is there too:
    agent.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t2"}})

Each turn: attachments are stored in the thread's workspace under GPT4Tools names and attached to
the user's message as content blocks whose ``extras`` carry the workspace ``name`` and a
``description`` (from ``describe=`` — e.g. a caption expert — or a neutral one), so the chat model
announces them exactly like GPT4Tools' training data. The checkpointer keeps every message; tool
files live in the workspace as long as the thread.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ibllm_agent.agent.chat_loading import load_chat_model
from ibllm_agent.agent.limits import AgentLimits, TurnLocks
from ibllm_agent.agent.memory import Memory, ThreadInfo, open_memory
from ibllm_agent.agent.models import ModelPool
from ibllm_agent.agent.tool_list import default_agent_tools, resolve_tools
from ibllm_agent.agent.workspace import StoredFile, Workspace, neutral_description
from ibllm_agent.errors import ConfigError
from ibllm_agent.sync_bridge import iterate_in_thread, run_in_thread
from ibllm_agent.types import Media

__all__ = ["Agent", "ToolCallRecord", "TurnEvent", "TurnResult", "build_agent", "load_chat_model"]

DEFAULT_MAX_STEPS = 8
# Invalid model steps (unknown tool, malformed Action) per turn that are answered with an error
# observation and retried before the turn ends with an answer naming the error. Two retries let a
# model fix a misspelt tool name or a missing Action Input line without letting a model that cannot
# follow the protocol loop for the whole step budget.
DEFAULT_INVALID_RETRIES = 2


@dataclass
class ToolCallRecord:
    """One tool call of a turn and its observation.

    ``status``: ``"success"``, ``"error"`` (the tool failed or the path was refused), ``"missing"``
    (no observation) or ``"invalid"`` (the model's step was not a valid call: unknown tool, malformed
    ``Action``; ``args`` is ``{"raw": <the Action Input or step text>}``, ``output`` the error
    observation the model was given).
    """

    name: str
    args: dict[str, Any]
    output: str
    status: str
    id: str | None = None


@dataclass
class TurnResult:
    """What one ``Agent.send`` produced.

    ``answer``: the final answer text. ``tool_calls``: every call and its observation, in order.
    ``files``: workspace names of files the tools created this turn. ``attachments``: workspace names
    of the files attached to this turn. ``stop_reason``: ``"answer"``, ``"step_limit"``,
    ``"invalid_output"`` (the model kept producing invalid steps) or ``"interrupted"``.
    """

    thread_id: str
    answer: str
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    stop_reason: str = "answer"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


@dataclass
class TurnEvent:
    """A streamed event of a turn: ``kind`` is ``"token"`` (answer text), ``"tool_call"``,
    ``"tool_result"`` or ``"done"`` (then ``result`` holds the ``TurnResult``). A ``tool_call`` with
    ``status="invalid"`` is a model step that was not a valid call (``args={"raw": …}``)."""

    kind: str
    text: str = ""
    name: str | None = None
    args: dict[str, Any] | None = None
    status: str | None = None
    result: TurnResult | None = None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "".join(parts)


def _events(mode: str, payload: Any, streamed: list[str]) -> list[TurnEvent]:
    """``TurnEvent``s of one LangGraph stream item (``messages`` tokens or node ``updates``)."""
    events: list[TurnEvent] = []
    if mode == "messages":
        chunk, _meta = payload
        piece = _text_of(getattr(chunk, "content", ""))
        # Only tokens the model streams: a whole AIMessage here was written by a node (e.g. the
        # step-limit or invalid-output answer of a middleware) and would arrive before that node's
        # tool_result events; ``_finish`` emits such answers after them instead.
        if piece and getattr(chunk, "type", "") == "AIMessageChunk" and not getattr(chunk, "tool_calls", None):
            streamed.append(piece)
            events.append(TurnEvent("token", text=piece))
        return events
    for node_update in (payload or {}).values():
        if not isinstance(node_update, dict):
            continue
        for m in node_update.get("messages", []):
            if getattr(m, "type", "") == "ai" and getattr(m, "tool_calls", None):
                streamed.clear()  # text streamed before a tool call was not the answer
                events.extend(TurnEvent("tool_call", name=c["name"], args=dict(c["args"])) for c in m.tool_calls)
            elif getattr(m, "type", "") == "ai" and getattr(m, "invalid_tool_calls", None):
                # An invalid step (its error observation follows as a tool_result), as in TurnResult.
                streamed.clear()
                events.extend(TurnEvent("tool_call", name=c.get("name") or "", args={"raw": c.get("args")},
                                        status="invalid") for c in m.invalid_tool_calls)
            elif getattr(m, "type", "") == "tool":
                events.append(TurnEvent("tool_result", text=_text_of(m.content), name=m.name,
                                        status=getattr(m, "status", "success")))
    return events


class Agent:
    """A tool-using conversational agent with persistent threads. Build it with ``build_agent``.

    Attributes:
        graph: the compiled LangGraph (``create_agent``) — ``invoke``/``stream`` pass through to it.
        memory: the ``Memory`` (checkpointer) holding every thread's messages.
        workspace: the ``Workspace`` holding every thread's files.
        pool: the ``ModelPool`` heavy tool models load into.
        tools: the tools bound to the model.
    """

    def __init__(
        self,
        graph: Any,
        *,
        memory: Memory,
        workspace: Workspace,
        pool: ModelPool,
        tools: list[Any],
        max_steps: int,
        describe: Callable[[StoredFile], str | None] | None = None,
        owns_memory: bool = True,
        chat_model: Any = None,
        limits: AgentLimits | None = None,
        experts: Any = None,
    ):
        self.limits = limits or AgentLimits()
        self.turn_locks = TurnLocks.for_sqlite(memory.path, self.limits.turn_wait_s) \
            if memory.kind == "sqlite" else TurnLocks(None, self.limits.turn_wait_s)
        self.graph = graph
        self.chat_model = chat_model  # the LangChain chat model the graph calls
        self.memory = memory
        self.workspace = workspace
        self.pool = pool
        self.tools = tools
        self.max_steps = max_steps
        self.describe = describe
        self._owns_memory = owns_memory
        from ibllm_agent.agent.experts import AgentExperts

        self.experts = experts if isinstance(experts, AgentExperts) else AgentExperts(experts, pool)

    # -- LangGraph pass-through --------------------------------------------------------------------
    # durability="sync": each step's checkpoint is written before the next step starts. With
    # LangGraph's default ("async") a process killed during a tool call can lose the model step that
    # requested the call, so the crash would not even be visible in the thread.
    def invoke(self, input: Any, config: dict | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("durability", "sync")
        return self.graph.invoke(input, config, **kwargs)

    def stream(self, input: Any, config: dict | None = None, **kwargs: Any) -> Iterator[Any]:
        kwargs.setdefault("durability", "sync")
        return self.graph.stream(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: dict | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("durability", "sync")
        if self.memory.kind == "sqlite":  # SqliteSaver has no async API: run the graph in a thread
            return await run_in_thread(self.graph.invoke, input, config, **kwargs)
        return await self.graph.ainvoke(input, config, **kwargs)

    # -- threads -----------------------------------------------------------------------------------
    @staticmethod
    def config(thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": str(thread_id)}}

    def threads(self) -> list[ThreadInfo]:
        """Stored threads, most recent first."""
        return self.memory.threads()

    def history(self, thread_id: str) -> list[Any]:
        """All messages of ``thread_id`` (empty for a new thread)."""
        state = self.graph.get_state(self.config(thread_id))
        return list(state.values.get("messages", [])) if state and state.values else []

    def delete_thread(self, thread_id: str) -> None:
        """Forget ``thread_id``: its checkpoints and its workspace files."""
        self.memory.delete(thread_id)
        self.workspace.delete_thread(thread_id)

    def repair(self, thread_id: str) -> int:
        """Answer tool calls a crash left unanswered with an "interrupted" observation.

        A process killed during a tool call leaves a checkpoint whose last ``AIMessage`` has calls
        without ``ToolMessage``s. This appends the missing observations (and a closing answer saying
        the turn was interrupted), so the thread is consistent and the next turn starts cleanly.
        Returns the number of patched calls.
        """
        from ibllm_agent.agent.middleware import dangling_tool_calls, patch_dangling

        config = self.config(thread_id)
        self._commit_pending(thread_id)
        messages = self.history(thread_id)
        dangling = dangling_tool_calls(messages)
        if not dangling:
            return 0
        patched = patch_dangling(messages)
        assert patched is not None
        if all(a is b for a, b in zip(patched, messages, strict=False)):
            # The usual crash: calls dangling at the end of the history; append the answers.
            self.graph.update_state(config, {"messages": patched[len(messages):]}, as_node="model")
        else:
            # Calls dangling in the middle of the history: rewrite the whole list in order.
            from langchain_core.messages import RemoveMessage
            from langgraph.graph.message import REMOVE_ALL_MESSAGES

            self.graph.update_state(config, {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *patched]},
                                    as_node="model")
        return len(dangling)

    def _commit_pending(self, thread_id: str) -> int:
        """Commit messages a stopped run wrote but never checkpointed; returns how many.

        A turn stopped between two graph steps (Ctrl-C in ``chat``, a consumer closing
        ``stream_turn``) leaves its last node's messages as *pending writes* of the newest checkpoint:
        ``history`` shows them (LangGraph applies pending writes when reading state), but the next
        run started with new input discards them — the streamed answer would silently vanish and two
        human messages would follow each other. Writing them as a regular update keeps the thread as
        the user saw it.
        """
        saver = getattr(self.graph, "checkpointer", None)
        config = self.config(thread_id)
        tup = saver.get_tuple(config) if saver is not None and hasattr(saver, "get_tuple") else None
        if tup is None or not tup.pending_writes:
            return 0
        committed = {getattr(m, "id", None)
                     for m in (tup.checkpoint.get("channel_values") or {}).get("messages", [])}
        extra = [m for m in self.history(thread_id) if getattr(m, "id", None) not in committed]
        if not extra:
            return 0
        self.graph.update_state(config, {"messages": extra}, as_node="model")
        return len(extra)

    def resume(self, thread_id: str) -> list[Any]:
        """Open an existing thread: repair an interrupted turn, return its messages."""
        self.repair(thread_id)
        return self.history(thread_id)

    # -- turns -------------------------------------------------------------------------------------
    def attach(self, thread_id: str, source: Any, modality: str | None = None,
               description: str | None = None, *, experts: bool | None = None) -> tuple[StoredFile, dict[str, Any]]:
        """Store one attachment in the thread's workspace; returns it and its content block (with the
        experts' context lines in ``extras["context"]``; ``experts``: per-call switch, ``None`` = the
        agent's setting)."""
        stored = self.workspace.thread(thread_id).save(source, modality)
        if description is None and self.describe is not None:
            description = self._describe(stored)
        description = (description or "").strip() or neutral_description(stored.modality)
        if description[-1] not in ".!?":
            description += "."  # training captions are sentences: "Description: A cat. Understand …"
        block_type = stored.modality if stored.modality in ("image", "audio", "video") else "file"
        block = {
            "type": block_type,
            "url": stored.path.as_uri(),
            "extras": {"name": stored.name, "description": description, "modality": stored.modality},
        }
        return stored, self.experts.annotate(block, stored, self.workspace.thread(thread_id), experts)

    def _describe(self, stored: StoredFile) -> str | None:
        """Caption from ``describe``: a function of the stored file, or an ``Expert`` (e.g. a caption
        model from ``ibllm_agent.experts``) called with the file as ``Media`` for its modalities."""
        describe = self.describe
        modalities = getattr(describe, "modalities", None)
        if modalities is not None:
            if stored.modality not in modalities:
                return None
            return describe(Media(modality=stored.modality, source=stored.path, name=stored.name))  # type: ignore[arg-type]
        return describe(stored)

    def _input(self, thread_id: str, text: str, attachments: Sequence[Any],
               experts: bool | None = None) -> tuple[dict, list[str], str]:
        blocks, names = [], []
        for a in attachments:
            if isinstance(a, dict) and "type" in a:  # a content block from ``attach`` (already stored)
                blocks.append(a)
                names.append((a.get("extras") or {}).get("name", ""))
                continue
            if isinstance(a, Media):
                stored, block = self.attach(thread_id, a.source, a.modality, experts=experts)
            elif isinstance(a, tuple) and len(a) == 2:
                stored, block = self.attach(thread_id, a[0], a[1], experts=experts)
            else:
                stored, block = self.attach(thread_id, a, experts=experts)
            blocks.append(block)
            names.append(stored.name)
        from langchain_core.messages import HumanMessage

        msg_id = f"human-{uuid.uuid4().hex}"
        content: Any = [{"type": "text", "text": text}, *blocks] if blocks else text
        return {"messages": [HumanMessage(content=content, id=msg_id)]}, names, msg_id

    def send(self, thread_id: str, text: str, attachments: Sequence[Any] = (), *,
             experts: bool | None = None) -> TurnResult:
        """Run one turn: ``text`` plus optional attachments (paths, bytes, PIL images, ``Media``,
        ``(source, modality)`` pairs, or content blocks returned by ``attach``). Returns the
        ``TurnResult``. ``experts``: run the experts on this turn's attachments (``None`` = the
        agent's setting)."""
        result = None
        for event in self.stream_turn(thread_id, text, attachments, stream_tokens=False, experts=experts):
            if event.kind == "done":
                result = event.result
        assert result is not None
        return result

    def stream_turn(self, thread_id: str, text: str, attachments: Sequence[Any] = (),
                    *, stream_tokens: bool = True, experts: bool | None = None) -> Iterator[TurnEvent]:
        """Run one turn, yielding ``TurnEvent``s: answer tokens as they are generated, each tool
        call and result, and finally ``done`` with the ``TurnResult``.

        One turn runs per thread at a time: a turn sent while another runs on the same thread (in
        this process, or in another one sharing the SQLite file) waits for it, and after
        ``limits.turn_wait_s`` raises ``ThreadBusyError`` — it is never lost or interleaved."""
        with self.turn_locks.hold(str(thread_id)):
            thread_id, inputs, names, msg_id, before = self._start(thread_id, text, attachments, experts)
            streamed: list[str] = []
            modes = ["updates", "messages"] if stream_tokens else ["updates"]
            for mode, payload in self.graph.stream(inputs, self.config(thread_id), stream_mode=modes,
                                                   durability="sync"):
                yield from _events(mode, payload, streamed)
            yield from self._finish(thread_id, msg_id, names, before, streamed, stream_tokens)

    async def astream_turn(self, thread_id: str, text: str, attachments: Sequence[Any] = (),
                           *, stream_tokens: bool = True, experts: bool | None = None) -> AsyncIterator[TurnEvent]:
        """Async ``stream_turn``: the turn runs in a worker thread (the SQLite checkpointer is
        synchronous) that sees the caller's contextvars; events arrive on the event loop as they
        happen. A consumer that stops early (``break``, ``aclose``, cancellation) stops the turn: no
        further model step or tool call runs (the one in progress finishes), and the thread is left
        as an interrupted turn that the next turn repairs."""
        events = iterate_in_thread(
            lambda: self.stream_turn(thread_id, text, attachments, stream_tokens=stream_tokens, experts=experts)
        )
        async with aclosing(events):
            async for event in events:
                yield event

    async def asend(self, thread_id: str, text: str, attachments: Sequence[Any] = (), *,
                    experts: bool | None = None) -> TurnResult:
        """Async ``send`` (cancelling it stops the turn, see ``astream_turn``)."""
        result = None
        events = self.astream_turn(thread_id, text, attachments, stream_tokens=False, experts=experts)
        async with aclosing(events):
            async for event in events:
                if event.kind == "done":
                    result = event.result
        assert result is not None
        return result

    def _start(self, thread_id: str, text: str, attachments: Sequence[Any], experts: bool | None = None):
        thread_id = str(thread_id)
        self.repair(thread_id)
        before = set(self.workspace.thread(thread_id).files())
        inputs, names, msg_id = self._input(thread_id, text, attachments, experts)
        before.update(names)
        return thread_id, inputs, names, msg_id, before

    def _finish(self, thread_id: str, msg_id: str, names: list[str], before: set[str],
                streamed: list[str], stream_tokens: bool) -> Iterator[TurnEvent]:
        result = self._result(thread_id, msg_id, names, before)
        if stream_tokens and result.answer and "".join(streamed).strip() != result.answer.strip():
            # The answer did not come through the token stream (e.g. the step-limit message).
            yield TurnEvent("token", text=result.answer)
        yield TurnEvent("done", result=result)

    def _result(self, thread_id: str, msg_id: str, attachments: list[str], before: set[str]) -> TurnResult:
        messages = self.history(thread_id)
        start = next((i for i, m in enumerate(messages) if getattr(m, "id", None) == msg_id), None)
        turn = messages[start + 1 :] if start is not None else []
        outputs = {m.tool_call_id: m for m in turn if getattr(m, "type", "") == "tool"}
        calls: list[ToolCallRecord] = []
        answer, stop = "", "answer"
        for m in turn:
            if getattr(m, "type", "") != "ai":
                continue
            for c in m.tool_calls:
                out = outputs.get(c.get("id"))
                calls.append(ToolCallRecord(
                    name=c["name"], args=dict(c["args"]), id=c.get("id"),
                    output=_text_of(out.content) if out is not None else "",
                    status=getattr(out, "status", "success") if out is not None else "missing",
                ))
            for c in getattr(m, "invalid_tool_calls", None) or []:
                out = outputs.get(c.get("id"))
                calls.append(ToolCallRecord(
                    name=c.get("name") or "", args={"raw": c.get("args")}, id=c.get("id"),
                    output=_text_of(out.content) if out is not None else f"Error: {c.get('error')}",
                    status="invalid",
                ))
            if not m.tool_calls and not getattr(m, "invalid_tool_calls", None):
                answer = _text_of(m.content)
                meta = m.response_metadata or {}
                if meta.get("ibllm_stop_reason"):
                    stop = meta["ibllm_stop_reason"]
                elif meta.get("ibllm_interrupted"):
                    stop = "interrupted"
        after = self.workspace.thread(thread_id).files()
        return TurnResult(
            thread_id=thread_id, answer=answer, tool_calls=calls,
            files=[f for f in after if f not in before], attachments=attachments, stop_reason=stop,
        )

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_memory:
            self.memory.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Agent(tools={[t.name for t in self.tools]}, memory={self.memory.url!r}, "
                f"workspace={str(self.workspace.root)!r}, max_steps={self.max_steps})")


def build_agent(
    model: Any,
    tools: Any = None,
    memory: Any = None,
    *,
    workspace: str | Path | Workspace | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    invalid_retries: int = DEFAULT_INVALID_RETRIES,
    pool: ModelPool | None = None,
    device: str | None = None,
    model_budget: int | str | None = None,
    describe: Any = None,
    system_prompt: str | None = None,
    middleware: Sequence[Any] = (),
    cache_dir: str | Path | None = None,
    limits: AgentLimits | None = None,
    chat_options: dict[str, Any] | None = None,
    experts: Any = None,
    dtype: str | None = None,
) -> Agent:
    """Build the agent: ``create_agent`` around a chat model, with a checkpointer and a workspace.

    Args:
        model: a chat model (e.g. ``ChatImageBindLLM``), a ``TextGenerator``, a model name
            (``"tiny"``, ``"demo"``, ``"official"``, ``"auto"``), ``"scripted:PATH.json"`` or a saved model folder (see
            ``load_chat_model``).
        tools: tools, functions or registered names; ``None`` = every tool in the default registry
            (tools of installed packages, entry-point group ``ibllm_agent.tools``) plus the built-in
            vision tools that can run here (``ibllm_agent.tools.default_tools(available_only=True)``:
            weights present or none needed; the description/VQA tools are answered by this chat
            model's generator); ``[]`` = none.
        memory: ``"sqlite:///PATH"`` (default: ``Settings.memory_url``, under the workspace),
            ``"postgres://…"`` (extra ``[serve]``), ``"memory"``, or a LangGraph checkpointer.
        workspace: the root folder for thread files (default ``Settings.workspace_dir``).
        max_steps: tool-calling model steps allowed per turn before the turn ends with a message
            saying the step limit was reached.
        invalid_retries: model steps per turn that are neither an answer nor a valid tool call
            (unknown tool name, ``Action:`` without ``Action Input:``, arguments that do not fit)
            which are answered with an ``Observation: Error: …`` the model reads and retried
            (default 2). One more invalid step ends the turn with an answer naming the error
            (``stop_reason="invalid_output"``), never with an empty answer. This works at the graph
            level, so the steps stay in the thread; ``ChatImageBindLLM(invalid_retries=…)`` retries
            inside one model call instead (the chat models ``load_chat_model`` builds keep its
            default 0, so each retry is visible here).
        pool / device / model_budget: the ``ModelPool`` heavy tool models load into (or the device
            and memory budget of a new one; default device from ``Settings.device``). ``device`` is
            also where a model given by name or folder loads (with ``dtype``; both by the Settings
            rules of ``ibllm_agent.load_model`` when None).
        describe: the caption in attachment announcements: ``describe(stored_file) -> str | None``
            or an ``ibllm_agent.experts.Expert`` (called with the stored file as ``Media`` for its
            modalities); without one (or when it returns nothing) a neutral description is used.
        system_prompt, middleware: passed to ``create_agent`` (middleware runs after ours).
        cache_dir: a ``VisualCache`` folder for cache-enhanced media encoding (see ``load_chat_model``).
        limits: ``AgentLimits`` — tool time limit, observation size, wait for a busy thread
            (defaults: 300 s, 4000 characters, 120 s; see ``ibllm_agent.agent.limits``).
        chat_options: ``ChatImageBindLLM`` fields for the chat model built from ``model``
            (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``; see ``load_chat_model``).
        experts: context experts run on attachments (``ibllm_agent.agent.experts``): ``True`` = Whisper
            for audio and the video object detector for video (models from ``pool``), a list of
            ``Expert`` objects, or ``None``/``False`` (off). Switch per turn with ``send(..., experts=)``.
    """
    from langchain.agents import create_agent

    from ibllm_agent.agent.middleware import (
        InvalidStepMiddleware,
        RepairMiddleware,
        StepLimitMiddleware,
        ToolGuardMiddleware,
        WorkspaceFilesMiddleware,
    )

    if max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    if invalid_retries < 0:
        raise ConfigError(f"invalid_retries must be >= 0, got {invalid_retries}")
    limits = limits or AgentLimits()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    model_device = device
    if pool is None:
        from ibllm_agent.config import get_settings, resolve_device

        if device is None:
            device = get_settings().device
        resolve_device(device or "auto")  # a device this machine lacks is a start-up error
        pool = ModelPool(device=device or "auto", budget=model_budget)
    from ibllm_agent.agent.experts import AgentExperts

    agent_experts = AgentExperts(experts, pool)  # (validates before anything is opened)
    # Memory first: a bad URL should fail before minutes of model loading.
    mem = open_memory(memory)
    try:
        chat = load_chat_model(model, cache_dir, device=model_device, dtype=dtype, **(chat_options or {}))
        tool_list = default_agent_tools(chat) if tools is None else resolve_tools(tools)
        graph = create_agent(
            chat,
            tool_list,
            system_prompt=system_prompt,
            middleware=[RepairMiddleware(), StepLimitMiddleware(max_steps), InvalidStepMiddleware(invalid_retries),
                        ToolGuardMiddleware(ws, pool, limits), WorkspaceFilesMiddleware(ws), *middleware],
            checkpointer=mem.saver,
        )
    except BaseException:
        mem.close()
        raise
    return Agent(graph, memory=mem, workspace=ws, pool=pool, tools=tool_list, max_steps=max_steps,
                 describe=describe, owns_memory=isinstance(memory, (str, type(None))), chat_model=chat,
                 limits=limits, experts=agent_experts)
