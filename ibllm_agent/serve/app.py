"""The FastAPI app: an OpenAI-compatible chat API over the batching scheduler, plus the agent.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (this module) and the
agent's ``/v1/threads/...`` (``threads.py``). Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 bad input, 401 missing/wrong key, 404
unknown model or thread file, 409 a turn of that thread is already running here, 413 body too
large, 429 queue full, 503 shutting down, 500 anything unexpected (logged, message kept generic).

Each request gets a fresh ``ChatImageBindLLM`` over a ``Lane`` of the shared scheduler, so requests
share forward passes but no state. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from ibllm_agent.errors import IbllmError
from ibllm_agent.serve.config import ServeConfig
from ibllm_agent.serve.openai_messages import to_langchain
from ibllm_agent.serve.safety import BodyLimitMiddleware, chat_model_options, check_bearer
from ibllm_agent.serve.scheduler import (
    BatchScheduler,
    GenerationCancelled,
    LanePool,
    QueueFullError,
    ServiceUnavailableError,
)

log = logging.getLogger(__name__)

__all__ = ["ApiError", "ChatCompletionRequest", "ServerState", "create_app"]


class ApiError(Exception):
    """An error answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error(exc: BaseException) -> ApiError:
    """Map an exception to the HTTP answer (typed errors of bad input are the client's fault)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        return ApiError(429, str(exc), "rate_limit_error", "queue_full")
    if isinstance(exc, ServiceUnavailableError):
        return ApiError(503, str(exc), "service_unavailable", "shutting_down")
    if isinstance(exc, GenerationCancelled):
        return ApiError(499, str(exc), "cancelled", "cancelled")
    if isinstance(exc, IbllmError):  # typed errors are bad input: media, content parts, context length…
        return ApiError(400, str(exc), "invalid_request_error", type(exc).__name__)
    log.exception("unexpected error", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", "server_error")


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request this server reads (others are accepted and ignored), plus the
    extensions ``modality_weights`` and ``cache`` (``{"enabled", "k", "t", "alpha"}``)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    modality_weights: dict[str, float] | None = None
    cache: dict[str, Any] | None = None


class ServerState:
    """What the routes share: the scheduler, the lanes, the worker threads, the agent pool."""

    def __init__(self, model: Any, config: ServeConfig):
        self.model = model
        self.config = config
        self.scheduler = BatchScheduler(model, max_batch_size=config.max_batch_size,
                                        max_wait_s=config.max_wait_ms / 1000, max_queue=config.max_queue,
                                        batching=config.batching)
        self.lanes = LanePool(self.scheduler, config.max_concurrent)
        # One thread per concurrent request: the chat model is blocking; asyncio's default pool is
        # far smaller than a batch.
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent + config.agent_workers,
                                           thread_name_prefix="ibllm-request")
        self.chat_options = {**chat_model_options(config.remote), **config.chat_options}
        self.agent_chat_options = {**chat_model_options(config.remote, agent=True), **config.chat_options}
        self.closing = False
        self.agents: Any = None  # threads.AgentPool, built on first use
        self.created = int(time.time())

    def chat_model(self, lane: Any, *, agent: bool = False) -> Any:
        from ibllm_agent import ChatImageBindLLM

        options = self.agent_chat_options if agent else self.chat_options
        return ChatImageBindLLM(model=lane, max_new_tokens=self.config.max_new_tokens, **options)

    def shutdown(self) -> None:
        self.closing = True
        self.scheduler.close()
        if self.agents is not None:
            self.agents.close()
        self.executor.shutdown(wait=True)


def create_app(model: Any, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (a ``TextGenerator``: ``ImageBindLLM`` or a test double)."""
    config = config or ServeConfig()
    state = ServerState(model, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn has finished the in-flight requests (graceful shutdown) when this runs.
        await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    app = FastAPI(title="ibllm-agent", lifespan=lifespan)
    app.state.ibllm = state

    async def guard(scope: dict, receive: Callable, send: Callable, inner: Callable) -> None:
        # A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streamed
        # responses and hides a client's disconnect from them).
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            error = None
            if config.api_keys and not check_bearer(headers.get(b"authorization", b"").decode("latin-1"),
                                                    config.api_keys):
                error = ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                                 "authentication_error", "invalid_api_key")
            elif state.closing:
                error = ApiError(503, "the server is shutting down", "service_unavailable", "shutting_down")
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await inner(scope, receive, send)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> JSONResponse:
        s = state.scheduler.stats
        body = {"status": "shutting_down" if state.closing else "ok", "model": config.model_id,
                "queued": state.scheduler.queued, "busy": state.scheduler.busy, "batched": state.scheduler.batched,
                "batches": s.batches, "rows": s.rows, "max_batch": s.max_batch, "cancelled": s.cancelled}
        return JSONResponse(body, status_code=503 if state.closing else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": config.model_id, "object": "model", "created": state.created, "owned_by": "ibllm-agent"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await _parse(request)
        loop = asyncio.get_running_loop()
        try:
            messages = await loop.run_in_executor(state.executor, to_langchain, req.messages, config.remote)
            kwargs = _call_kwargs(state, req)
            lane = state.lanes.acquire()
        except Exception as exc:  # noqa: BLE001
            return api_error(exc).response()
        try:
            chat = state.chat_model(lane)
            runnable = chat.bind_tools(req.tools, tool_choice=req.tool_choice) if req.tools else chat
        except Exception as exc:  # noqa: BLE001 - a tool schema LangChain cannot read is the client's error
            state.lanes.release(lane)
            error = api_error(exc)
            if error.status == 500:
                error = ApiError(400, f"invalid tools: {type(exc).__name__}: {exc}", param="tools")
            return error.response()
        if req.stream:
            return await _stream_response(state, req, runnable, messages, kwargs, lane, request)

        def work() -> Any:
            try:
                return runnable.invoke(messages, **kwargs)
            finally:
                state.lanes.release(lane)

        future = loop.run_in_executor(state.executor, work)
        try:
            message = await _unless_disconnected(future, request, lane.cancel)
        except Exception as exc:  # noqa: BLE001
            return api_error(exc).response()
        if message is None:  # client gone: nobody reads the answer
            return JSONResponse({}, status_code=499)
        return _completion_body(req, message, config.model_id)

    from ibllm_agent.serve.threads import threads_router

    app.include_router(threads_router(state))
    app.add_middleware(_Wrap, handler=guard)
    # Outermost: reject oversized bodies before anything reads them.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    return app


class _Wrap:
    """ASGI middleware calling ``handler(scope, receive, send, inner_app)``."""

    def __init__(self, app: Callable, handler: Callable):
        self.app, self.handler = app, handler

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.handler(scope, receive, send, self.app)


async def _parse(request: Request) -> ChatCompletionRequest:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"invalid request: {where}: {first['msg']}", param=where) from None
    state = request.app.state.ibllm
    if req.model != state.config.model_id:
        raise ApiError(404, f"model {req.model!r} does not exist; this server serves {state.config.model_id!r}",
                       code="model_not_found", param="model")
    if req.n != 1:
        raise ApiError(400, "n must be 1 (one choice per request)", param="n")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    return req


def _call_kwargs(state: ServerState, req: ChatCompletionRequest) -> dict[str, Any]:
    """Per-call keyword arguments of the chat model from the request."""
    kwargs: dict[str, Any] = {}
    budget = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if budget is not None:
        if not 1 <= budget <= state.config.max_tokens_cap:
            raise ApiError(400, f"max_tokens must be in [1, {state.config.max_tokens_cap}], got {budget}",
                           param="max_tokens")
        kwargs["max_new_tokens"] = budget
    for name in ("temperature", "top_p", "seed"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    if req.stop is not None:
        kwargs["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.modality_weights:
        kwargs["modality_weights"] = req.modality_weights
    if req.cache is not None:
        kwargs["cache"] = req.cache
    if req.tool_choice is not None and not req.tools and req.tool_choice != "none":
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    return kwargs


async def _unless_disconnected(future: asyncio.Future, request: Request, cancel: Callable[[], None]) -> Any:
    """Await ``future``; if the client disconnects first, ``cancel()`` and return None."""
    while True:
        done, _ = await asyncio.wait({future}, timeout=0.1)
        if done:
            return future.result()
        if await request.is_disconnected():
            cancel()
            # The cancelled generation's error (GenerationCancelled) is nobody's business.
            with contextlib.suppress(Exception):
                await future
            return None


def _usage(message: Any) -> dict[str, int]:
    u = getattr(message, "usage_metadata", None) or {}
    p, c = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(message: Any, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if (message.response_metadata or {}).get("finish_reason") == "length" else "stop"


def _tool_calls_json(message: Any) -> list[dict[str, Any]]:
    return [{"id": tc["id"], "type": "function",
             "function": {"name": tc["name"], "arguments": json.dumps(tc["args"], ensure_ascii=False)}}
            for tc in message.tool_calls]


def _invalid_calls_json(calls: list[dict[str, Any]], errors: dict[str, str]) -> list[dict[str, Any]]:
    """Extension: model steps that named an unknown tool or did not parse (not OpenAI tool calls;
    the client may show them or retry)."""
    return [{"id": c.get("id"), "name": c.get("name"), "arguments": c.get("args"),
             "error": c.get("error") or errors.get(c.get("id") or "", "")} for c in calls]


def _completion_body(req: ChatCompletionRequest, message: Any, model_id: str) -> dict[str, Any]:
    calls = _tool_calls_json(message)
    content = message.content if isinstance(message.content, str) else message.text
    out: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if calls:
        out["tool_calls"] = calls
    reasoning = (message.additional_kwargs or {}).get("reasoning_content")
    if reasoning:
        out["reasoning_content"] = reasoning
    invalid = _invalid_calls_json(message.invalid_tool_calls or [], {})
    if invalid:
        out["invalid_tool_calls"] = invalid
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": out, "finish_reason": _finish_reason(message, bool(calls)),
                     "logprobs": None}],
        "usage": _usage(message),
    }


_DONE = object()


async def _stream_response(state: ServerState, req: ChatCompletionRequest, runnable: Any, messages: list[Any],
                           kwargs: dict[str, Any], lane: Any, request: Request) -> Any:
    """SSE of ``chat.completion.chunk`` events then ``[DONE]``. An error before the first chunk is an
    ordinary HTTP error; after it, an ``error`` event (the ``openai`` client raises it)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def produce() -> None:
        try:
            stream = runnable.stream(messages, **kwargs)
            try:
                for chunk in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            finally:
                stream.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            state.lanes.release(lane)
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = loop.run_in_executor(state.executor, produce)
    first = await queue.get()
    if isinstance(first, BaseException):
        await worker
        return api_error(first).response()
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool((req.stream_options or {}).get("include_usage"))

    def event(delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created,
                                "model": state.config.model_id,
                                "choices": [] if delta is None else [
                                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def body() -> AsyncIterator[str]:
        item: Any = first
        tool_index: dict[str, int] = {}
        last: Any = None
        finished = False
        try:
            yield event({"role": "assistant", "content": ""})
            while item is not _DONE:
                if isinstance(item, BaseException):
                    err = api_error(item)
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                for delta in _chunk_deltas(item, tool_index):
                    yield event(delta)
                if getattr(item, "chunk_position", None) == "last":
                    last = item
                item = await queue.get()
            finish = "tool_calls" if tool_index else (
                "length" if last is not None and (last.response_metadata or {}).get("finish_reason") == "length"
                else "stop")
            yield event({}, finish)
            if include_usage:
                yield event(None, usage=_usage(last) if last is not None else _usage(None))
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                lane.cancel()  # the client went away (or the stream failed): stop decoding

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _chunk_deltas(chunk: Any, tool_index: dict[str, int]) -> list[dict[str, Any]]:
    """OpenAI deltas of one LangChain ``AIMessageChunk``."""
    out: list[dict[str, Any]] = []
    reasoning = (chunk.additional_kwargs or {}).get("reasoning_content")
    if reasoning:
        out.append({"reasoning_content": reasoning})
    if isinstance(chunk.content, str) and chunk.content:
        out.append({"content": chunk.content})
    errors = (chunk.additional_kwargs or {}).get("tool_call_errors") or {}
    for tc in chunk.tool_call_chunks or []:
        if tc.get("id") in errors:  # an invalid step, not a call the client could run
            out.append({"invalid_tool_calls": _invalid_calls_json([tc], errors)})
            continue
        key = tc.get("id") or f"#{len(tool_index)}"
        index = tool_index.setdefault(key, len(tool_index))
        call: dict[str, Any] = {"index": index, "function": {"arguments": tc.get("args") or ""}}
        if tc.get("id"):
            call["id"] = tc["id"]
            call["type"] = "function"
        if tc.get("name"):
            call["function"]["name"] = tc["name"]
        out.append({"tool_calls": [call]})
    return out

