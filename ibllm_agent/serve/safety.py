"""Server-side safety: what a client may make the server read or fetch, bearer keys, body size.

Content policy in server mode (the server never reads its own files or fetches private addresses
for a client): the request parser (``openai_messages``) accepts media only as inline data (data URIs,
base64) or ``http(s)`` URLs, and every URL is fetched by ``fetch_remote`` here — scheme check, then
``ibllm_agent.fetch.safe_fetch`` (every resolved address public unless ``allow_private_network``,
the connection pinned to the checked address, every redirect hop checked again, a deadline for the
whole download, a byte cap). Local paths and ``file://`` never reach a loader.

``chat_model_options`` is the ONE place the server configures its chat models' content handling:
chat models serving client messages get ``ContentPolicy.server()``, so the chat model enforces the
same rules on anything that reaches it.
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ibllm_agent.errors import ContentBlockError

__all__ = ["BodyLimitMiddleware", "RemotePolicy", "chat_model_options", "check_bearer", "fetch_remote"]


@dataclass(frozen=True)
class RemotePolicy:
    """What the server may fetch for a client: ``http(s)`` only; private networks refused unless
    ``allow_private_network`` (tests, trusted intranets); ``timeout`` seconds for a whole download;
    ``max_bytes`` per file."""

    allow_private_network: bool = False
    timeout: float = 10.0
    max_bytes: int = 32 * 1024 * 1024

    def content_policy(self, *, local_files: bool) -> Any:
        from ibllm_agent.content import ContentPolicy

        make = ContentPolicy.library if local_files else ContentPolicy.server
        return make(allow_private_network=self.allow_private_network, fetch_timeout=self.timeout,
                    fetch_max_bytes=self.max_bytes)


def chat_model_options(policy: RemotePolicy, *, agent: bool = False) -> dict[str, Any]:
    """Keyword arguments for the ``ChatImageBindLLM``s the server builds.

    ``agent=True``: the agent's chat model. Its attachments are files the server itself stored in the
    thread's workspace (client media are decoded/fetched by the server's parser first), announced as
    ``file://`` blocks, so it may read local files (its own workspace); remote rules stay the same.
    """
    return {"content_policy": policy.content_policy(local_files=agent)}


def fetch_remote(url: str, policy: RemotePolicy) -> bytes:
    """Download ``url`` for a client under ``policy``: ``ContentBlockError`` for a URL that is not
    ``http(s)``, ``FetchError`` (also a ``ContentBlockError``) for a refused or failed download."""
    from ibllm_agent.fetch import safe_fetch

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ContentBlockError(
            f"URL scheme {scheme or '(none)'!r} is not allowed: send media as a data URI or an http(s) URL "
            "(the server never reads local files for a client)"
        )
    return safe_fetch(url, timeout=policy.timeout, max_bytes=policy.max_bytes,
                      allow_private_network=policy.allow_private_network)


def check_bearer(header: str | None, keys: Iterable[str]) -> bool:
    """True when ``Authorization: Bearer <key>`` names one of ``keys`` (constant-time compare)."""
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip().encode()
    return any(hmac.compare_digest(given, k.encode()) for k in keys)


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodyLimitMiddleware:
    """Answer 413 to request bodies over ``max_bytes``: at once from ``Content-Length``, or as soon as
    a chunked body passes the limit (the body is never read past it)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = rejected = False

        async def limited_receive() -> dict:
            # Past the limit: answer 413 now and tell the app the client is gone (an exception here
            # would reach Starlette's outermost error handler and become a 500).
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    if not started:
                        await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if rejected:
                return  # the 413 has been sent; whatever the app answers after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise

    async def _reject(self, send: Callable) -> None:
        import json

        body = json.dumps({"error": {
            "message": f"request body is larger than the server's limit of {self.max_bytes} bytes",
            "type": "invalid_request_error", "param": None, "code": "request_too_large",
        }}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
