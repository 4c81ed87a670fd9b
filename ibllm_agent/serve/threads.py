"""The agent endpoint: threads with memory and tools, stateless in the process.

====================================================  ===============================================
route                                                 does
====================================================  ===============================================
``POST /v1/threads/{id}/messages``                    one agent turn: ``{"content": str | parts,
                                                      "stream": bool, "temperature", "top_p",
                                                      "max_tokens", "seed", "modality_weights",
                                                      "cache"}`` → the turn's result (or SSE events)
``GET /v1/threads/{id}/messages``                     the thread's messages
``GET /v1/threads/{id}/files/{name}``                 a file of the thread's workspace (tool output)
``GET /v1/threads``  /  ``DELETE /v1/threads/{id}``   list / forget threads
====================================================  ===============================================

Everything a thread is lives in the checkpointer (messages) and the workspace (files): point two
server processes at one PostgreSQL memory URL and one workspace root and either serves any thread.
A process keeps only a pool of agents (compiled graphs over scheduler lanes) and the ids of the turns
it is running now (a second turn of a thread that is running here gets 409; clients send a thread's
turns one after another).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import queue
import re
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from ibllm_agent.serve.openai_messages import parse_content
from ibllm_agent.serve.scheduler import Lane, QueueFullError
from ibllm_agent.serve.turns import TurnSettingsMiddleware, turn_settings

if TYPE_CHECKING:
    from ibllm_agent.serve.app import ServerState

__all__ = ["AgentPool", "TurnRequest", "history_json", "threads_router"]


class TurnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str | list[dict[str, Any]]
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    modality_weights: dict[str, float] | None = None
    cache: dict[str, Any] | None = None


class AgentPool:
    """``size`` agents sharing one checkpointer and one workspace, each on its own scheduler lane."""

    def __init__(self, state: ServerState):
        from ibllm_agent.agent import build_agent
        from ibllm_agent.agent.memory import open_memory
        from ibllm_agent.agent.workspace import Workspace
        from ibllm_agent.config import get_settings

        config = state.config
        settings = get_settings(workspace_dir=config.workspace_dir, memory_url=config.memory_url)
        self.workspace = Workspace(settings.workspace_dir)
        self.memory = open_memory(settings.memory_url)
        self._free: queue.SimpleQueue[tuple[Any, Lane]] = queue.SimpleQueue()
        self.agents = []
        try:
            for _ in range(config.agent_workers):
                lane = Lane(state.scheduler)
                agent = build_agent(state.chat_model(lane, agent=True), tools=config.agent_tools, memory=self.memory.saver,
                                    workspace=self.workspace, max_steps=config.max_steps,
                                    middleware=[TurnSettingsMiddleware()])
                self.agents.append(agent)
                self._free.put((agent, lane))
        except BaseException:
            self.memory.close()
            raise
        self.running: set[str] = set()

    @property
    def any(self) -> Any:
        return self.agents[0]

    def acquire(self) -> tuple[Any, Lane]:
        try:
            agent, lane = self._free.get_nowait()
        except queue.Empty:
            raise QueueFullError("all agent workers are busy; retry later") from None
        lane._reset()
        return agent, lane

    def release(self, item: tuple[Any, Lane]) -> None:
        item[1]._reset()
        self._free.put(item)

    def close(self) -> None:
        self.memory.close()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def history_json(messages: list[Any]) -> list[dict[str, Any]]:
    """Thread messages as JSON: role, content text, attachment names, tool calls / results."""
    out = []
    for m in messages:
        kind = getattr(m, "type", "")
        item: dict[str, Any] = {"id": getattr(m, "id", None), "content": _text(m.content)}
        if kind == "human":
            item["role"] = "user"
            item["attachments"] = [(b.get("extras") or {}).get("name") for b in (m.content or [])
                                   if isinstance(b, dict) and b.get("type") != "text"] if isinstance(m.content, list) else []
        elif kind == "ai":
            item["role"] = "assistant"
            item["tool_calls"] = [{"id": c["id"], "name": c["name"], "args": c["args"]} for c in m.tool_calls]
        elif kind == "tool":
            item.update(role="tool", tool_call_id=m.tool_call_id, name=m.name, status=getattr(m, "status", "success"))
        else:
            item["role"] = kind
        out.append(item)
    return out


def _file_url(thread_id: str, name: str) -> str:
    return f"/v1/threads/{urllib.parse.quote(thread_id, safe='')}/files/{urllib.parse.quote(name)}"


def _result_json(result: Any) -> dict[str, Any]:
    data = result.to_dict()
    data["files"] = [{"name": n, "url": _file_url(result.thread_id, n)} for n in result.files]
    data["attachments"] = [{"name": n, "url": _file_url(result.thread_id, n)} for n in result.attachments]
    return data


def _as_files(media: list[Any]) -> tuple[list[tuple[Path, str]], tempfile.TemporaryDirectory | None]:
    """Attachments as temporary files named with their extension (``.ply``, ``.wav``…): the workspace
    stores a file by what its name and content say, and raw bytes alone lose the file type."""
    if not media:
        return [], None
    folder = tempfile.TemporaryDirectory(prefix="ibllm-upload-")
    files = []
    for i, a in enumerate(media):
        suffix = Path(a.filename).suffix.lower() if a.filename else ""
        if not suffix and a.mime:
            suffix = mimetypes.guess_extension(a.mime.split(";")[0].strip()) or ""
        if not re.fullmatch(r"(\.[a-z0-9]{1,8})?", suffix):
            suffix = ""
        path = Path(folder.name) / f"upload{i}{suffix}"
        path.write_bytes(a.data)
        files.append((path, a.modality))
    return files, folder


def threads_router(state: ServerState) -> APIRouter:
    from ibllm_agent.serve.app import ApiError, api_error

    router = APIRouter(prefix="/v1/threads")

    building = threading.Lock()

    def pool() -> AgentPool:
        # Built on first use (chat-only deployments never pay for the agents), once.
        with building:
            if state.agents is None:
                state.agents = AgentPool(state)
        return state.agents

    async def in_thread(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(state.executor, fn, *args)

    @router.get("")
    async def list_threads() -> Any:
        threads = await in_thread(lambda: pool().any.threads())
        return {"object": "list", "data": [{"id": t.thread_id, "updated_at": t.updated_at} for t in threads]}

    @router.get("/{thread_id}/messages")
    async def get_messages(thread_id: str) -> Any:
        messages = await in_thread(lambda: pool().any.history(thread_id))
        return {"thread_id": thread_id, "messages": history_json(messages)}

    @router.delete("/{thread_id}")
    async def delete(thread_id: str) -> Any:
        if thread_id in pool().running:
            return ApiError(409, f"thread {thread_id!r} has a turn running", code="thread_busy").response()
        await in_thread(pool().any.delete_thread, thread_id)
        return {"id": thread_id, "deleted": True}

    @router.get("/{thread_id}/files/{name:path}")
    async def get_file(thread_id: str, name: str) -> Any:
        from ibllm_agent.errors import WorkspaceError

        try:
            path = pool().workspace.thread(thread_id).resolve(name)
        except WorkspaceError as exc:
            return ApiError(404, str(exc), code="file_not_found").response()
        return FileResponse(path)

    @router.post("/{thread_id}/messages")
    async def post_message(thread_id: str, request: Request) -> Any:
        try:
            turn = TurnRequest.model_validate(await request.json())
        except ValidationError as exc:
            first = exc.errors()[0]
            return ApiError(400, f"invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}").response()
        except ValueError as exc:
            return ApiError(400, f"request body is not valid JSON: {exc}").response()
        agents = await in_thread(pool)
        if thread_id in agents.running:
            return ApiError(409, f"thread {thread_id!r} already has a turn running", code="thread_busy").response()
        try:
            text, media = await in_thread(parse_content, turn.content, "content", state.config.remote)
            if turn.max_tokens is not None and not 1 <= turn.max_tokens <= state.config.max_tokens_cap:
                raise ApiError(400, f"max_tokens must be in [1, {state.config.max_tokens_cap}]")
            item = agents.acquire()
        except Exception as exc:  # noqa: BLE001
            return api_error(exc).response()
        agents.running.add(thread_id)
        agent, lane = item
        try:
            attachments, temp_dir = _as_files(media)
        except OSError as exc:
            agents.release(item)
            agents.running.discard(thread_id)
            return ApiError(500, f"cannot stage the attachments: {exc}", "server_error").response()
        # A part's "weight" becomes its modality's weight for this turn (the agent fuses by modality).
        weights = {**{a.modality: a.weight for a in media if a.weight is not None}, **(turn.modality_weights or {})}
        settings = {"temperature": turn.temperature, "top_p": turn.top_p, "max_new_tokens": turn.max_tokens,
                    "seed": turn.seed, "modality_weights": weights or None, "cache": turn.cache}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def run() -> None:
            try:
                with turn_settings(**settings):
                    for event in agent.stream_turn(thread_id, text, attachments, stream_tokens=turn.stream):
                        loop.call_soon_threadsafe(events.put_nowait, event)
            except BaseException as exc:  # noqa: BLE001
                loop.call_soon_threadsafe(events.put_nowait, exc)
            finally:
                if temp_dir is not None:
                    temp_dir.cleanup()
                agents.release(item)
                agents.running.discard(thread_id)
                loop.call_soon_threadsafe(events.put_nowait, done)

        worker = loop.run_in_executor(state.executor, run)
        if not turn.stream:
            result = None
            while True:
                getter = asyncio.ensure_future(events.get())
                while not getter.done():
                    await asyncio.wait({getter}, timeout=0.1)
                    if not getter.done() and await request.is_disconnected():
                        lane.cancel()
                item_ = getter.result()
                if item_ is done:
                    break
                if isinstance(item_, BaseException):
                    await worker
                    return api_error(item_).response()
                if item_.kind == "done":
                    result = item_.result
            await worker
            return JSONResponse(_result_json(result))

        async def body() -> AsyncIterator[str]:
            finished = False
            try:
                while (ev := await events.get()) is not done:
                    if isinstance(ev, BaseException):
                        yield f"data: {json.dumps(api_error(ev).body())}\n\n"
                        continue
                    data: dict[str, Any] = {"type": ev.kind}
                    if ev.kind == "done":
                        data["result"] = _result_json(ev.result)
                    else:
                        data.update({k: v for k, v in (("text", ev.text), ("name", ev.name), ("args", ev.args),
                                                        ("status", ev.status)) if v not in (None, "")})
                    yield f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    lane.cancel()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router
