"""Agent middleware: workspace-safe tool calls, errors as observations, a step limit, crash repair.

- ``ToolGuardMiddleware``: resolves every workspace path argument inside the thread's workspace
  before a tool runs (``..``, absolute paths, symlinks out, unknown, over-long or control-character
  names → an error observation; the tool never runs), sets the ``ToolContext`` the tool can read,
  runs the tool under the ``AgentLimits`` time limit, turns any tool exception or timeout into a
  ``ToolMessage(status="error")`` the model reads as its ``Observation:``, rewrites absolute
  workspace paths in tool output back to workspace names and cuts long output to
  ``max_observation_chars`` with a note.
- ``StepLimitMiddleware``: ends a turn whose model keeps calling tools after ``max_steps`` steps,
  with a final answer that says so.
- ``InvalidStepMiddleware``: a model step that is neither an answer nor a valid tool call (unknown
  tool, ``Action:`` without ``Action Input:``, arguments that do not fit) gets an error observation
  the model reads on its next step; after ``max_retries`` such steps in a turn the turn ends with an
  answer that says why — never silently with an empty answer (``create_agent`` alone ends a run on
  any message without ``tool_calls``).
- ``RepairMiddleware``: at the start of each turn, answers tool calls a crashed process never
  answered with an "interrupted" observation, so the history the model sees is always valid
  (every ``AIMessage`` tool call followed by its ``ToolMessage``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, hook_config
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.graph.message import REMOVE_ALL_MESSAGES

from ibllm_agent.agent.limits import (
    AgentLimits,
    ToolTimeout,
    call_with_deadline,
    cut_observation,
    timeout_observation,
)
from ibllm_agent.agent.registry import _CONTEXT, ToolContext, path_fields_of
from ibllm_agent.errors import WorkspaceError

if TYPE_CHECKING:
    from ibllm_agent.agent.models import ModelPool
    from ibllm_agent.agent.workspace import Workspace

__all__ = [
    "INTERRUPTED_OBSERVATION",
    "InvalidStepMiddleware",
    "RepairMiddleware",
    "StepLimitMiddleware",
    "ToolGuardMiddleware",
    "dangling_tool_calls",
    "patch_dangling",
    "step_limit_message",
]

INTERRUPTED_OBSERVATION = "Error: interrupted: the tool call did not finish (the process stopped); no result."
INTERRUPTED_ANSWER = "The previous turn was interrupted before it finished."


def step_limit_message(max_steps: int) -> str:
    return (
        f"I stopped after {max_steps} tool steps without reaching a final answer (step limit reached). "
        "Please rephrase the request or ask for one step at a time."
    )


def _thread_id(runtime: Any) -> str:
    config = getattr(runtime, "config", None) or {}
    thread_id = (config.get("configurable") or {}).get("thread_id")
    if thread_id is None:
        from langgraph.config import get_config

        thread_id = (get_config().get("configurable") or {}).get("thread_id")
    if thread_id is None:
        raise WorkspaceError(
            'no thread_id: call the agent with config={"configurable": {"thread_id": "..."}}'
        )
    return str(thread_id)


def _error_message(call: dict, text: str) -> ToolMessage:
    return ToolMessage(content=text, tool_call_id=call["id"], name=call.get("name"), status="error")


class ToolGuardMiddleware(AgentMiddleware):
    """Workspace path resolution + tool context + time limit + observation size + exceptions →
    error observations (``limits``: an ``AgentLimits``)."""

    def __init__(self, workspace: Workspace, pool: ModelPool, limits: AgentLimits | None = None):
        super().__init__()
        self.workspace = workspace
        self.pool = pool
        self.limits = limits or AgentLimits()

    def _prepare(self, request: Any) -> tuple[Any, ToolContext | None, ToolMessage | None]:
        try:
            return self._prepare_checked(request)
        except GraphBubbleUp:
            raise
        except Exception as exc:  # whatever the model wrote must end as an observation, never raise
            return request, None, _error_message(request.tool_call, f"Error: {type(exc).__name__}: {exc}")

    def _prepare_checked(self, request: Any) -> tuple[Any, ToolContext | None, ToolMessage | None]:
        call = request.tool_call
        try:
            thread_id = _thread_id(request.runtime)
            ws = self.workspace.thread(thread_id)
        except WorkspaceError as exc:
            return request, None, _error_message(call, f"Error: {exc}")
        ctx = ToolContext(thread_id=thread_id, workspace=ws, pool=self.pool)
        tool = request.tool
        if tool is None:  # unknown tool name: ToolNode answers with its own error message
            return request, ctx, None
        args = dict(call.get("args") or {})
        for field in path_fields_of(tool):
            value = args.get(field)
            if isinstance(value, str):
                try:
                    args[field] = str(ws.resolve(value))
                except WorkspaceError as exc:
                    return request, ctx, _error_message(call, f"Error: {exc}")
        return request.override(tool_call={**call, "args": args}), ctx, None

    def _finish(self, result: Any, ctx: ToolContext | None) -> Any:
        if isinstance(result, ToolMessage) and isinstance(result.content, str):
            content = result.content
            if ctx is not None:
                root = str(ctx.workspace.root.resolve()) + "/"
                content = content.replace(root, "")
            content = cut_observation(content, self.limits.max_observation_chars)
            if content != result.content:
                result = result.model_copy(update={"content": content})
        return result

    def _timed_out(self, request: Any) -> ToolMessage:
        call = request.tool_call
        timeout = self.limits.tool_timeout_s or 0
        return _error_message(call, timeout_observation(call.get("name"), timeout))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        request, ctx, error = self._prepare(request)
        if error is not None:
            return self._finish(error, ctx)
        token = _CONTEXT.set(ctx)
        try:
            # The tool runs in a worker with a deadline: a hung tool costs its thread, not the turn.
            return self._finish(call_with_deadline(lambda: handler(request), self.limits.tool_timeout_s), ctx)
        except ToolTimeout:
            return self._timed_out(request)
        except GraphBubbleUp:  # interrupts / parent commands are control flow, not errors
            raise
        except Exception as exc:
            return self._finish(_error_message(request.tool_call, f"Error: {type(exc).__name__}: {exc}"), ctx)
        finally:
            _CONTEXT.reset(token)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        request, ctx, error = self._prepare(request)
        if error is not None:
            return self._finish(error, ctx)
        token = _CONTEXT.set(ctx)
        try:
            timeout = self.limits.tool_timeout_s or None
            return self._finish(await asyncio.wait_for(handler(request), timeout), ctx)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes on Python 3.10
            return self._timed_out(request)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return self._finish(_error_message(request.tool_call, f"Error: {type(exc).__name__}: {exc}"), ctx)
        finally:
            _CONTEXT.reset(token)


class WorkspaceFilesMiddleware(AgentMiddleware):
    """Tells a ``ChatImageBindLLM`` the thread's workspace files (its ``files=`` call option), so its
    guided decoding offers a file parameter exactly the files that exist — not a name the model
    made up in an earlier answer, and also a tool's output from an earlier turn."""

    def __init__(self, workspace: Workspace):
        super().__init__()
        self.workspace = workspace

    def _with_files(self, request: Any) -> Any:
        from ibllm_agent.chat import ChatImageBindLLM

        if not isinstance(request.model, ChatImageBindLLM):
            return request
        files = self.workspace.thread(_thread_id(request.runtime)).files()
        return request.override(model_settings={**(request.model_settings or {}), "files": files})

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(self._with_files(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return await handler(self._with_files(request))


def _current_turn(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return list(messages[i + 1 :])
    return list(messages)


class StepLimitMiddleware(AgentMiddleware):
    """Stop a turn after ``max_steps`` tool-calling model steps, answering that the limit was hit."""

    def __init__(self, max_steps: int):
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        steps = sum(1 for m in _current_turn(state["messages"]) if isinstance(m, AIMessage) and m.tool_calls)
        if steps < self.max_steps:
            return None
        answer = AIMessage(
            content=step_limit_message(self.max_steps),
            response_metadata={"ibllm_stop_reason": "step_limit"},
        )
        return {"messages": [answer], "jump_to": "end"}


def invalid_output_message(error: str) -> str:
    return (
        "I could not complete the request: my last step was not a valid answer or tool call "
        f"({error}). Please rephrase the request."
    )


class InvalidStepMiddleware(AgentMiddleware):
    """Feed invalid model steps back as error observations; end the turn after ``max_retries``.

    An invalid step is an ``AIMessage`` with ``invalid_tool_calls`` and no ``tool_calls`` (what
    ``ChatImageBindLLM`` returns for an unknown tool name or a malformed ``Action``). Each of its
    calls is answered with ``ToolMessage("Error: …", status="error")`` — rendered to a GPT4Tools model
    as ``Observation: Error: …`` after its own step text — and the model runs again. The
    ``max_retries + 1``-th invalid step of a turn ends it with an answer naming the error
    (``response_metadata["ibllm_stop_reason"] = "invalid_output"``).
    """

    def __init__(self, max_retries: int):
        super().__init__()
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries

    @hook_config(can_jump_to=["model", "end"])
    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        messages = state["messages"]
        last = messages[-1] if messages else None
        if not isinstance(last, AIMessage) or last.tool_calls or not last.invalid_tool_calls:
            return None
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        # A streamed message lost ``error`` in chunk aggregation; ChatImageBindLLM keeps it here.
        streamed_errors = (last.additional_kwargs or {}).get("tool_call_errors") or {}
        errors = [
            c.get("error") or streamed_errors.get(c.get("id")) or "the step could not be parsed"
            for c in last.invalid_tool_calls
        ]
        observations: list[AnyMessage] = [
            ToolMessage(content=f"Error: {err}", tool_call_id=c["id"], name=c.get("name") or "invalid step",
                        status="error")
            for c, err in zip(last.invalid_tool_calls, errors, strict=True)
            if c.get("id") and c["id"] not in answered
        ]
        invalid_steps = sum(
            1 for m in _current_turn(messages)
            if isinstance(m, AIMessage) and not m.tool_calls and m.invalid_tool_calls
        )
        if invalid_steps <= self.max_retries:
            return {"messages": observations, "jump_to": "model"}
        final = AIMessage(
            content=invalid_output_message(errors[0]),
            response_metadata={"ibllm_stop_reason": "invalid_output"},
        )
        return {"messages": [*observations, final], "jump_to": "end"}


def dangling_tool_calls(messages: Sequence[AnyMessage]) -> list[tuple[int, dict]]:
    """``(message index, tool call)`` for every tool call that has no ``ToolMessage`` answer."""
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    return [
        (i, call)
        for i, m in enumerate(messages)
        if isinstance(m, AIMessage)
        for call in m.tool_calls
        if call.get("id") not in answered
    ]


def interrupted_tool_message(call: dict) -> ToolMessage:
    return ToolMessage(
        content=INTERRUPTED_OBSERVATION,
        tool_call_id=call["id"],
        name=call.get("name"),
        status="error",
        id=f"interrupted-{call['id']}",
        response_metadata={"ibllm_interrupted": True},
    )


def patch_dangling(messages: Sequence[AnyMessage], *, close_turns: bool = True) -> list[AnyMessage] | None:
    """The message list with an "interrupted" ``ToolMessage`` right after every unanswered call.

    With ``close_turns``, a turn that ends in patched observations (no final answer) also gets a
    closing ``AIMessage`` saying it was interrupted — so history renderers see a complete exchange.
    Returns ``None`` when nothing needs patching.
    """
    dangling = dangling_tool_calls(messages)
    if not dangling:
        return None
    by_index: dict[int, list[dict]] = {}
    for i, call in dangling:
        by_index.setdefault(i, []).append(call)
    out: list[AnyMessage] = []
    n = len(messages)
    for i, m in enumerate(messages):
        out.append(m)
        if i not in by_index:
            continue
        # Keep the ToolMessages of this AI message that did arrive, then add the missing ones.
        j = i + 1
        while j < n and isinstance(messages[j], ToolMessage):
            j += 1
        if j == i + 1:
            out.extend(interrupted_tool_message(c) for c in by_index[i])
            if close_turns and (j == n or isinstance(messages[j], HumanMessage)):
                out.append(_interrupted_answer())
        else:
            by_index[j - 1] = by_index.pop(i)  # insert after the last received ToolMessage
            by_index.setdefault(j - 1, [])
    return out


def _interrupted_answer() -> AIMessage:
    return AIMessage(
        content=INTERRUPTED_ANSWER,
        id=f"interrupted-{uuid.uuid4().hex[:12]}",
        response_metadata={"ibllm_interrupted": True},
    )


class RepairMiddleware(AgentMiddleware):
    """Before a turn starts, answer tool calls of earlier turns that a crash left unanswered."""

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        messages = list(state["messages"])
        # The newest message is this turn's input; only earlier turns can hold dangling calls.
        if not messages or not dangling_tool_calls(messages[:-1]):
            return None
        patched = patch_dangling(messages[:-1])
        assert patched is not None
        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *patched, messages[-1]]}
