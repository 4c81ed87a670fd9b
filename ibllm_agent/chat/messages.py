"""Step → message mapping: a parsed GPT4Tools step (or plain text) becomes ``AIMessage`` fields,
stream events become ``AIMessageChunk``s, and the stream ``Gate`` holds an attempt back while an
invalid step may still be retried.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.json import parse_partial_json

from ibllm_agent import protocol as P
from ibllm_agent.chat.rendering import Call
from ibllm_agent.errors import ToolArgumentError

__all__ = ["Gate", "event_chunks", "invalid_args", "metadata", "step_message_fields", "usage"]


def invalid_args(step: P.ParsedStep) -> str:
    """``args`` of an invalid call: the Action Input, else the raw step text.

    Never empty and never a JSON object: LangChain re-parses streamed tool-call chunks and would turn
    an empty or JSON-object ``args`` back into a (wrong) valid call.
    """
    candidate = step.action_input or ""
    if candidate:
        try:
            parsed = parse_partial_json(candidate)
        except ValueError:
            return candidate
        if not isinstance(parsed, dict):
            return candidate
    return step.raw or "<empty output>"


def step_message_fields(call: Call, raw_text: str) -> dict[str, Any]:
    """content / tool_calls / invalid_tool_calls / reasoning for a finished step."""
    if not call.tool_mode:
        return {"content": raw_text.strip(), "tool_calls": [], "invalid_tool_calls": [], "reasoning": None}
    step = P.parse_step(raw_text)
    out: dict[str, Any] = {"content": "", "tool_calls": [], "invalid_tool_calls": [], "reasoning": step.thought}
    if step.kind == "final":
        out["content"] = step.answer or ""
        return out
    call_id = f"call_{uuid.uuid4().hex}"
    error = step.error
    if step.kind == "action":
        names = [t.name for t in call.tools]
        name = P.match_tool_name(step.action or "", names)
        if name is None:
            error = f"unknown tool {step.action!r}; the bound tools are {names}"
        else:
            spec = next(t for t in call.tools if t.name == name)
            try:
                args = P.map_arguments(step.action_input or "", spec)
            except ToolArgumentError as exc:
                error = str(exc)
            else:
                out["tool_calls"] = [{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
                return out
    out["invalid_tool_calls"] = [
        {
            "name": step.action or None,
            "args": invalid_args(step),
            "id": call_id,
            "error": error,
            "type": "invalid_tool_call",
        }
    ]
    return out


def metadata(model_name: str, call: Call, raw_text: str, finish: str, retries: int = 0) -> dict[str, Any]:
    """``response_metadata`` of a step's message (``raw_text`` is replayed byte-exact next step)."""
    meta = {
        "model_name": model_name,
        "raw_text": raw_text,
        "finish_reason": finish,
        "tools_shown": [t.name for t in call.shown],
    }
    if retries:
        meta["invalid_retries"] = retries  # invalid steps fed back and regenerated
    return meta


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """``usage_metadata`` (summed over every attempt of a call)."""
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def event_chunks(kind: str, value: Any, fields: dict[str, Any] | None) -> Iterator[ChatGenerationChunk]:
    """Message chunks for one stream event (``fields``: the parsed step of a ``"step"`` event)."""
    if kind == "content":
        yield ChatGenerationChunk(message=AIMessageChunk(content=value))
    elif kind == "reasoning":
        yield ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": value}))
    elif kind == "step" and fields is not None:
        # A call's index is its content block's place in the message: after the reasoning block when
        # the step had a Thought (with output_version="v1" LangChain merges blocks of equal index, so
        # a call at 0 would be folded into the reasoning block).
        first = 1 if fields.get("reasoning") else 0
        for i, tc in enumerate(fields["tool_calls"]):
            chunk = {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc["id"], "index": first + i}
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        for i, tc in enumerate(fields["invalid_tool_calls"], start=first + len(fields["tool_calls"])):
            chunk = {"name": tc["name"], "args": tc["args"], "id": tc["id"], "index": i}
            # Aggregating chunks rebuilds invalid_tool_calls with error=None (LangChain re-parses
            # tool_call_chunks), so the reason travels in additional_kwargs, keyed by call id.
            yield ChatGenerationChunk(message=AIMessageChunk(
                content="", tool_call_chunks=[chunk],
                additional_kwargs={"tool_call_errors": {tc["id"]: tc["error"]}},
            ))
        if fields["content"]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=fields["content"]))


class Gate:
    """Holds one attempt's stream chunks back while a retry is still possible.

    The step is decided by the first answer text (content) or parsed step: an answer or a valid tool
    call releases what was held and lets the rest through; an invalid step sets ``invalid_error`` and
    the attempt is dropped (fed back to the model as an error observation).
    """

    def __init__(self, call: Call, hold: bool):
        self.call, self.hold = call, hold
        self.held: list[ChatGenerationChunk] = []
        self.invalid_error: str | None = None
        self.invalid_raw = ""  # the invalid step's text (prefill included), replayed in the retry

    def emit(self, events: list[tuple[str, Any]]) -> Iterator[ChatGenerationChunk]:
        for kind, value in events:
            fields = step_message_fields(self.call, value) if kind == "step" else None
            if self.hold and fields is not None and fields["invalid_tool_calls"]:
                self.invalid_error = fields["invalid_tool_calls"][0]["error"] or "invalid step"
                self.invalid_raw = value
                return
            chunks = list(event_chunks(kind, value, fields))
            if self.hold and (kind == "content" or fields is not None):
                self.hold = False
                yield from self.release()
            if self.hold:
                self.held.extend(chunks)
            else:
                yield from chunks

    def release(self) -> Iterator[ChatGenerationChunk]:
        held, self.held = self.held, []
        yield from held
