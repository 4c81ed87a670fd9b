"""The model calls behind one chat-model call: generate (or stream) a step, and while
``invalid_retries`` allows, feed an invalid step back as ``Observation: Error: …`` and regenerate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from ibllm_agent import protocol as P
from ibllm_agent.chat.loading import call_lock
from ibllm_agent.chat.messages import Gate, metadata, step_message_fields, usage
from ibllm_agent.chat.rendering import Call, retry
from ibllm_agent.chat.step_stream import StepStream
from ibllm_agent.stops import StopCutter, cut_at_stop

if TYPE_CHECKING:
    from ibllm_agent.chat.model import ChatImageBindLLM

__all__ = ["generate", "stream"]


def generate(chat: ChatImageBindLLM, call: Call) -> ChatResult:
    """One ``AIMessage`` from ``model.generate`` (usage summed over every attempt)."""
    failed: list[P.ScratchStep] = []
    prompt_tokens = completion_tokens = 0
    while True:
        with call_lock(chat.model):
            gen = chat.model.generate(call.prompt, call.media, sampling=call.sampling, cache=call.cache)
        text, cut = cut_at_stop(P.after_prefill(call.prefill, gen.text), call.sampling.stop)
        raw_text = call.prefill + text
        fields = step_message_fields(call, raw_text)
        prompt_tokens += gen.prompt_tokens or chat.model.count_tokens(call.prompt)
        completion_tokens += gen.completion_tokens or chat.model.count_tokens(text)
        if not fields["invalid_tool_calls"] or len(failed) >= chat.invalid_retries:
            break
        call = retry(chat.model, call, failed, raw_text, fields["invalid_tool_calls"][0]["error"])
    reasoning = fields.pop("reasoning")
    message = AIMessage(
        **fields,
        additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
        response_metadata=metadata(
            chat.model_name, call, raw_text, "stop" if cut else gen.finish_reason, len(failed)
        ),
        usage_metadata=usage(prompt_tokens, completion_tokens),
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


def stream(chat: ChatImageBindLLM, call: Call) -> Iterator[ChatGenerationChunk]:
    """Message chunks from ``model.stream``; closing this generator closes the model's stream."""
    failed: list[P.ScratchStep] = []
    prompt_tokens = completion_tokens = 0
    while True:
        # While a retry is still possible, hold this attempt's chunks back until the step is
        # decided: an answer (content) or a valid tool call goes out; an invalid step is dropped
        # and fed back as an error observation.
        gate = Gate(call, hold=call.tool_mode and len(failed) < chat.invalid_retries)
        cutter = StopCutter(call.sampling.stop)
        parser = StepStream(call.prefill, call.tool_mode)
        pieces: list[str] = []

        with call_lock(chat.model):
            stream = chat.model.stream(call.prompt, call.media, sampling=call.sampling, cache=call.cache)
            try:
                started = False
                for piece in stream:
                    if piece and not started:  # the first text: the space after a prefill's colon
                        started, piece = True, P.after_prefill(call.prefill, piece)
                    safe = cutter.feed(piece)
                    pieces.append(safe)
                    yield from gate.emit(parser.feed(safe))
                    if cutter.stopped or gate.invalid_error is not None:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # stop the model's decoding loop when we stop early (stop string, consumer)
        if gate.invalid_error is None:
            tail = cutter.flush()
            pieces.append(tail)
            yield from gate.emit(parser.feed(tail) + parser.finish())
        text = "".join(pieces)
        raw_text = call.prefill + text
        prompt_tokens += chat.model.count_tokens(call.prompt)
        completion_tokens += chat.model.count_tokens(text)
        if gate.invalid_error is None:
            yield from gate.release()  # never decided (e.g. empty output): release as is
            break
        call = retry(chat.model, call, failed, gate.invalid_raw, gate.invalid_error)
    yield ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            chunk_position="last",
            response_metadata=metadata(
                chat.model_name, call, raw_text, "stop" if cutter.stopped else "eos", len(failed)
            ),
            usage_metadata=usage(prompt_tokens, completion_tokens),
        )
    )
