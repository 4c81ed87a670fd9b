"""Chat message content blocks → ``Media`` attachments.

Accepted forms (anything ``message.content_blocks`` normalises to a v1 data block):

======================================  ============================================================
block                                   becomes
======================================  ============================================================
``{"type": "image", "base64", "mime_type"}``   bytes (also ``audio``, ``video``, ``file``)
``{"type": "image", "url": "data:…;base64,…"}`` bytes (OpenAI ``image_url`` data URIs normalise here)
``{"type": "image", "url": "https://…"}``      bytes fetched under the ``ContentPolicy`` (public hosts only)
``{"type": "image", "url": "file:///…"}``       a local ``Path`` (also a bare path in ``url`` or ``path``),
                                                only when the policy allows local files
``{"type": "image", "file_id": "…"}``           whatever ``file_resolver(file_id)`` returns
======================================  ============================================================

Modality: ``image``/``audio``/``video`` blocks give theirs; a ``file`` block's modality comes from
``extras["modality"]``, else its ``mime_type``, else its file extension — so point clouds
(``model/ply``, ``.ply``/``.pcd``/``.xyz``), depth, thermal and IMU data travel as ``file`` blocks::

    {"type": "file", "url": "/data/chair.ply"}                               # point
    {"type": "file", "base64": b64, "mime_type": "application/x-depth+npy"} # depth
    {"type": "image", "url": "/data/cam.png", "extras": {"modality": "thermal"}}

``extras`` may also carry ``weight`` (fusion weight; default from per-call ``modality_weights``),
``name`` (the workspace name announced to a GPT4Tools model) and ``description`` (its caption).
Bad blocks — and blocks the ``ContentPolicy`` refuses — raise ``ContentBlockError`` (``FetchError``
for downloads) naming the block and the reason.
"""

from __future__ import annotations

import base64
import binascii
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ibllm_agent.errors import ContentBlockError
from ibllm_agent.fetch import safe_fetch
from ibllm_agent.media.formats import extension_modality, mime_modality
from ibllm_agent.types import MODALITIES, Media

DATA_BLOCK_TYPES = ("image", "audio", "video", "file")

FileResolver = Callable[[str], Any]


class ContentPolicy(BaseModel):
    """What message content may reference.

    allow_local_files: local paths and ``file://`` URLs (True for the library and CLI —
        ``ContentPolicy.library()``, the default; False for servers — ``ContentPolicy.server()``,
        where a client must never make the process read its disk).
    allow_private_network: fetch ``http(s)`` URLs whose host resolves to a loopback, private,
        link-local, multicast, reserved or unspecified address (False: every address of the host
        and of every redirect hop must be public; see ``ibllm_agent.fetch``).
    fetch_timeout: seconds for a whole download, redirects included. fetch_max_bytes: per file.
    max_redirects: redirect hops followed (each one checked again).

    Inline content (``base64`` fields, ``data:`` URIs) is always accepted: it carries its own
    bytes. ``file_id`` blocks go through the chat model's ``file_resolver``, which decides itself.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_local_files: bool = True
    allow_private_network: bool = False
    fetch_timeout: float = Field(10.0, gt=0)
    fetch_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)

    @classmethod
    def library(cls, **overrides: Any) -> ContentPolicy:
        """Library and CLI default: local files allowed, remote URLs public-only."""
        return cls(**overrides)

    @classmethod
    def server(cls, **overrides: Any) -> ContentPolicy:
        """Serving a remote client: no local files, remote URLs public-only."""
        return cls(**{"allow_local_files": False, **overrides})


def _describe(block: Mapping[str, Any]) -> str:
    """A short, log-safe description of a block (no base64 payload)."""
    shown = {k: v for k, v in block.items() if k not in ("base64", "data", "id")}
    if "url" in shown and str(shown["url"]).startswith("data:"):
        shown["url"] = str(shown["url"])[:40] + "…"
    if "base64" in block:
        shown["base64"] = f"<{len(str(block['base64']))} chars>"
    return repr(shown)


def block_modality(block: Mapping[str, Any]) -> str:
    """The modality of a data block (see module docstring for the precedence)."""
    extras = block.get("extras") or {}
    explicit = extras.get("modality")
    if explicit:
        if explicit not in MODALITIES:
            raise ContentBlockError(
                f"content block {_describe(block)}: unknown modality {explicit!r}; known: {list(MODALITIES)}"
            )
        return explicit
    kind = block.get("type")
    if kind in ("image", "audio", "video"):
        return kind
    url = block.get("url")
    data_mime = None
    if isinstance(url, str) and url.startswith("data:"):
        data_mime = url[5:].split(",", 1)[0].split(";")[0]
    location = block.get("path") or extras.get("filename") or extras.get("name") or url
    found = (
        mime_modality(block.get("mime_type"))
        or mime_modality(data_mime)
        or extension_modality(location if isinstance(location, str) and not str(location).startswith("data:") else None)
    )
    if found is None or found == "array":  # .npy holds points, IMU or depth: the sender must say which
        raise ContentBlockError(
            f"content block {_describe(block)}: cannot tell its modality; give a mime_type "
            f"(e.g. model/ply, application/x-depth), a known file extension or extras={{'modality': …}}"
        )
    return found


def _b64(data: str, block: Mapping[str, Any]) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ContentBlockError(f"content block {_describe(block)}: invalid base64 data ({exc})") from None


def _data_uri(url: str, block: Mapping[str, Any]) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ContentBlockError(f"content block {_describe(block)}: malformed data URI (no ',')")
    if header.endswith(";base64"):
        return _b64(payload, block)
    return urllib.parse.unquote_to_bytes(payload)


class _FetchCache:
    """A small LRU of fetched bodies. The chat model re-renders the whole thread on every agent step,
    so the same remote attachment would otherwise be downloaded once per step."""

    def __init__(self, max_items: int = 16, max_bytes: int = 256 * 1024 * 1024):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str) -> bytes | None:
        with self._lock:
            body = self._data.get(url)
            if body is not None:
                self._data.move_to_end(url)
            return body

    def put(self, url: str, body: bytes) -> None:
        with self._lock:
            self._data[url] = body
            self._data.move_to_end(url)
            while len(self._data) > self.max_items or sum(map(len, self._data.values())) > self.max_bytes:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


FETCH_CACHE = _FetchCache()


def fetch(url: str, policy: ContentPolicy | None = None, *, use_cache: bool = True) -> bytes:
    """GET ``url`` under ``policy`` (default ``ContentPolicy.library()``) with ``safe_fetch``;
    raises ``FetchError``.

    Bodies are kept in a small in-process LRU (``FETCH_CACHE``, 16 files / 256 MiB) unless
    ``use_cache=False``; ``FETCH_CACHE.clear()`` empties it. The cache key includes whether private
    addresses were allowed, so a body fetched under a permissive policy never answers a strict one.
    """
    policy = policy or ContentPolicy.library()
    key = f"{int(policy.allow_private_network)} {url}"
    if use_cache and (cached := FETCH_CACHE.get(key)) is not None and len(cached) <= policy.fetch_max_bytes:
        return cached
    body = safe_fetch(
        url,
        timeout=policy.fetch_timeout,
        max_bytes=policy.fetch_max_bytes,
        allow_private_network=policy.allow_private_network,
        max_redirects=policy.max_redirects,
    )
    if use_cache:
        FETCH_CACHE.put(key, body)
    return body


def block_source(
    block: Mapping[str, Any],
    *,
    file_resolver: FileResolver | None = None,
    policy: ContentPolicy | None = None,
) -> Any:
    """The ``Media.source`` of a data block: bytes, a ``Path`` or whatever the resolver returns,
    under ``policy`` (default ``ContentPolicy.library()``)."""
    policy = policy or ContentPolicy.library()
    extras = block.get("extras") or {}
    if block.get("base64") is not None:
        return _b64(str(block["base64"]), block)
    url = block.get("url")
    path = block.get("path") or extras.get("path")
    if isinstance(url, str) and url:
        if url.startswith("data:"):
            return _data_uri(url, block)
        scheme = urllib.parse.urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            return fetch(url, policy)
        if scheme == "file":
            path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        elif scheme and len(scheme) > 1:  # "c:" drive letters are paths, not schemes
            raise ContentBlockError(f"content block {_describe(block)}: unsupported URL scheme {scheme!r}")
        else:
            path = url
    if path:
        if not policy.allow_local_files:
            raise ContentBlockError(
                f"content block {_describe(block)}: local files and file:// URLs are not allowed by this "
                f"content policy (send the bytes as base64 or a data: URI)"
            )
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise ContentBlockError(f"content block {_describe(block)}: no such file {str(p)!r}")
        return p
    if block.get("file_id"):
        if file_resolver is None:
            raise ContentBlockError(
                f"content block {_describe(block)}: file_id {block['file_id']!r} given but the chat model "
                f"has no file_resolver to look it up"
            )
        try:
            source = file_resolver(str(block["file_id"]))
        except ContentBlockError:
            raise
        except (KeyError, LookupError, OSError) as exc:
            raise ContentBlockError(
                f"content block {_describe(block)}: file_id {block['file_id']!r} could not be resolved ({exc})"
            ) from None
        if source is None:
            raise ContentBlockError(f"content block {_describe(block)}: unknown file_id {block['file_id']!r}")
        return source
    raise ContentBlockError(f"content block {_describe(block)}: no url, base64, path or file_id source")


def block_to_media(
    block: Mapping[str, Any],
    *,
    modality_weights: Mapping[str, float] | None = None,
    file_resolver: FileResolver | None = None,
    policy: ContentPolicy | None = None,
) -> Media:
    """One v1 data block → ``Media`` (modality, source, weight, name)."""
    modality = block_modality(block)
    extras = block.get("extras") or {}
    weight = extras.get("weight")
    if weight is None:
        weight = (modality_weights or {}).get(modality, 1.0)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ContentBlockError(f"content block {_describe(block)}: weight {weight!r} is not a number") from None
    source = block_source(block, file_resolver=file_resolver, policy=policy)
    if isinstance(source, Media):
        return Media(modality=source.modality, source=source.source, weight=weight, name=source.name)
    name = extras.get("name") or extras.get("filename")
    return Media(modality=modality, source=source, weight=weight, name=str(name) if name else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MessageContent:
    """A message split into its text and its attachments (plus per-attachment captions, by index)."""

    text: str
    media: tuple[Media, ...] = ()
    descriptions: tuple[str | None, ...] = ()


def split_message(
    message: Any,
    *,
    modality_weights: Mapping[str, float] | None = None,
    file_resolver: FileResolver | None = None,
    policy: ContentPolicy | None = None,
) -> MessageContent:
    """Split a LangChain message into text (text blocks joined by newlines) and ``Media`` items.

    Non-data blocks other than text (reasoning, tool calls, …) are not part of what a human said and
    are skipped.
    """
    texts: list[str] = []
    media: list[Media] = []
    descriptions: list[str | None] = []
    for block in _blocks(message):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "text-plain" and block.get("text") is not None:
            texts.append(str(block["text"]))
        elif kind in DATA_BLOCK_TYPES:
            media.append(
                block_to_media(block, modality_weights=modality_weights, file_resolver=file_resolver, policy=policy)
            )
            extras = block.get("extras") or {}
            descriptions.append(extras.get("description") or extras.get("caption"))
    return MessageContent("\n".join(t for t in texts if t), tuple(media), tuple(descriptions))


def message_text(message: Any) -> str:
    """Only the text of a message (text blocks joined by newlines; attachments ignored)."""
    return "\n".join(
        str(b.get("text", "")) for b in _blocks(message) if b.get("type") in ("text", "text-plain") and b.get("text")
    )


def _blocks(message: Any) -> Sequence[Mapping[str, Any]]:
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    try:
        return list(message.content_blocks)
    except AttributeError:
        return [b if isinstance(b, Mapping) else {"type": "text", "text": str(b)} for b in content]
