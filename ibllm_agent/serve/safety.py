"""Server-side safety: what a client may make the server read or fetch, bearer keys, body size.

Content policy in server mode (the server never reads its own files or fetches private addresses
for a client): the request parser (``openai_messages``) accepts media only as inline data (data URIs,
base64) or ``http(s)`` URLs, and every URL goes through ``fetch_remote`` here — scheme check, every
resolved address of the host public (no loopback / private / link-local / reserved / multicast)
unless ``allow_private_network``, redirects followed by hand with the same check at every hop, a
timeout for the whole download and a byte cap. Local paths and ``file://`` never reach a loader.

``chat_model_options`` is the ONE place the server configures its chat models' content handling:
when ``ibllm_agent.content.ContentPolicy`` is available it returns the server policy, so the chat
model enforces the same rules on anything that reaches it.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ibllm_agent.errors import ContentBlockError, FetchError

__all__ = ["BodyLimitMiddleware", "RemotePolicy", "chat_model_options", "check_bearer", "fetch_remote"]

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class RemotePolicy:
    """What the server may fetch for a client: ``http(s)`` only; private networks refused unless
    ``allow_private_network`` (tests, trusted intranets); ``timeout`` seconds for a whole download;
    ``max_bytes`` per file."""

    allow_private_network: bool = False
    timeout: float = 10.0
    max_bytes: int = 32 * 1024 * 1024


def chat_model_options(policy: RemotePolicy, *, agent: bool = False) -> dict[str, Any]:
    """Keyword arguments for the ``ChatImageBindLLM``s the server builds.

    ``agent=True``: the agent's chat model. Its attachments are files the server itself stored in the
    thread's workspace (client media are decoded/fetched by the server's parser first), announced as
    ``file://`` blocks, so it keeps the library policy (local files allowed).
    """
    options: dict[str, Any] = {"fetch_timeout": policy.timeout, "fetch_max_bytes": policy.max_bytes}
    if agent:
        return options
    try:
        from ibllm_agent.content import ContentPolicy  # type: ignore[attr-defined]
    except ImportError:
        return options
    options["content_policy"] = ContentPolicy.server(
        allow_private_network=policy.allow_private_network, fetch_timeout=policy.timeout,
        fetch_max_bytes=policy.max_bytes,
    )
    return options


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, policy: RemotePolicy) -> urllib.parse.SplitResult:
    """Refuse anything but an ``http(s)`` URL whose host resolves to public addresses only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ContentBlockError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed: send media as a data URI or an "
            "http(s) URL (the server never reads local files for a client)"
        )
    host = parts.hostname
    if not host:
        raise ContentBlockError(f"URL {url[:200]!r} names no host")
    if policy.allow_private_network:
        return parts
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r} of {url[:200]!r}: {exc}") from None
    bad = sorted({i[4][0] for i in infos if not _public(i[4][0])})
    if bad:
        raise ContentBlockError(
            f"URL {url[:200]!r} points to a non-public address ({', '.join(bad)}): the server does not fetch "
            "from loopback, private or link-local networks"
        )
    return parts


def fetch_remote(url: str, policy: RemotePolicy) -> bytes:
    """Download ``url`` under ``policy`` (see module docstring); raises ``ContentBlockError`` for a
    refused URL, ``FetchError`` for a failed or oversized download."""
    import httpx

    deadline = time.monotonic() + policy.timeout
    with httpx.Client(follow_redirects=False, timeout=policy.timeout) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(url, policy)
            with client.stream("GET", url) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = str(response.url.join(location))
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"fetching {url[:200]!r} failed: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise FetchError(f"{url[:200]!r} is {declared} bytes, over the limit of {policy.max_bytes}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise FetchError(f"{url[:200]!r} is over the limit of {policy.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"fetching {url[:200]!r} took longer than {policy.timeout} s")
                return bytes(body)
    raise FetchError(f"fetching {url[:200]!r}: more than {MAX_REDIRECTS} redirects")


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
