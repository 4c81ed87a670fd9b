"""OpenAI chat messages → LangChain messages, with the server's content rules.

Content parts accepted in ``user`` messages (anything else is a 400 naming the part):

==========================================================  =========================================
part                                                        becomes
==========================================================  =========================================
``{"type": "text", "text": …}``                             text
``{"type": "image_url", "image_url": {"url": …}}``          image (data URI or ``http(s)`` URL)
``{"type": "input_audio", "input_audio": {"data", "format"}}``  audio (base64, ``wav``/``mp3``/…)
``{"type": "video_url", "video_url": {"url": …}}``          video (extension, the name vLLM uses)
``{"type": "file", "file": {"file_data", "filename"}}``     point cloud / depth / thermal / IMU /
                                                            video / audio / image by mime type or
                                                            file extension (``chair.ply``)
==========================================================  =========================================

Extensions on any media part: ``"modality"`` (force one: ``point``, ``depth``, ``thermal``, ``imu``,
…) and ``"weight"`` (its fusion weight). URLs are fetched by ``safety.fetch_remote`` (public
addresses only); local paths, ``file://`` and OpenAI ``file_id`` references are refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ibllm_agent.errors import ContentBlockError
from ibllm_agent.serve.safety import RemotePolicy, fetch_remote
from ibllm_agent.types import MODALITIES

__all__ = ["Attachment", "parse_content", "to_langchain"]

_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg", "m4a": "audio/mp4"}


@dataclass(frozen=True)
class Attachment:
    """One decoded media part: raw bytes and what they are."""

    modality: str
    data: bytes
    mime: str | None = None
    weight: float | None = None
    filename: str | None = None

    def block(self) -> dict[str, Any]:
        """The LangChain v1 data block the chat model reads."""
        kind = self.modality if self.modality in ("image", "audio", "video") else "file"
        extras: dict[str, Any] = {"modality": self.modality}
        if self.weight is not None:
            extras["weight"] = self.weight
        if self.filename:
            extras["filename"] = self.filename
        return {"type": kind, "base64": base64.b64encode(self.data).decode("ascii"),
                "mime_type": self.mime or "application/octet-stream", "extras": extras}


def _b64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise ContentBlockError(f"{where}: expected base64 data")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ContentBlockError(f"{where}: invalid base64 data ({exc})") from None


def _data_uri(url: str, where: str) -> tuple[bytes, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise ContentBlockError(f"{where}: data URIs must be base64 (data:<mime>;base64,<data>)")
    return _b64(payload, where), header[: -len(";base64")] or "application/octet-stream"


def _url_source(url: Any, where: str, policy: RemotePolicy) -> tuple[bytes, str | None]:
    if not isinstance(url, str) or not url:
        raise ContentBlockError(f"{where}: missing url")
    if url.startswith("data:"):
        return _data_uri(url, where)
    data = fetch_remote(url, policy)
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0]
    return data, mime


def _modality_of(mime: str | None, filename: str | None, default: str | None, where: str) -> str:
    from ibllm_agent.media.formats import extension_modality, mime_modality

    found = mime_modality(mime) or extension_modality(filename)
    if found and found != "array":  # .npy holds points, IMU or depth: the sender must say which
        return found
    if default:
        return default
    raise ContentBlockError(
        f"{where}: cannot tell the modality; give a mime type (data:model/ply;base64,…), a filename with a "
        f"known extension (.ply, .png, .wav, .mp4) or \"modality\": one of {list(MODALITIES)}"
    )


def _part_attachment(part: Mapping[str, Any], where: str, policy: RemotePolicy) -> Attachment:
    kind = part.get("type")
    forced = part.get("modality")
    if forced is not None and forced not in MODALITIES:
        raise ContentBlockError(f"{where}: unknown modality {forced!r}; known: {list(MODALITIES)}")
    weight = part.get("weight")
    if weight is not None and (not isinstance(weight, (int, float)) or weight < 0):
        raise ContentBlockError(f"{where}: weight must be a number >= 0, got {weight!r}")
    filename = None
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        data, mime = _url_source(url, where, policy)
        default = "image"
    elif kind == "video_url":
        spec = part.get("video_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        data, mime = _url_source(url, where, policy)
        default = "video"
    elif kind == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, Mapping):
            raise ContentBlockError(f"{where}: input_audio must be an object with data and format")
        data = _b64(spec.get("data"), where)
        fmt = str(spec.get("format") or "wav").lower()
        mime = _AUDIO_MIME.get(fmt, f"audio/{fmt}")
        default = "audio"
    elif kind == "file":
        spec = part.get("file")
        if not isinstance(spec, Mapping):
            raise ContentBlockError(f"{where}: file must be an object with file_data and filename")
        if spec.get("file_id"):
            raise ContentBlockError(f"{where}: file_id references are not supported (this server has no files "
                                    "API); send the content inline as file_data")
        raw = spec.get("file_data")
        filename = spec.get("filename")
        if isinstance(raw, str) and raw.startswith("data:"):
            data, mime = _data_uri(raw, where)
        else:
            data, mime = _b64(raw, where), None
        default = None
    else:
        raise ContentBlockError(
            f"{where}: unsupported content part type {kind!r}; use text, image_url, input_audio, video_url or file"
        )
    modality = forced or _modality_of(mime if mime != "application/octet-stream" else None, filename, default, where)
    return Attachment(modality=modality, data=data, mime=mime, weight=weight, filename=filename)


def parse_content(content: Any, where: str, policy: RemotePolicy) -> tuple[str, list[Attachment]]:
    """A message's ``content`` (a string or a list of parts) → (text, attachments)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, Sequence):
        raise ContentBlockError(f"{where}: content must be a string or a list of parts")
    texts, media = [], []
    for i, part in enumerate(content):
        w = f"{where}.content[{i}]"
        if not isinstance(part, Mapping):
            raise ContentBlockError(f"{w}: a content part must be an object")
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        else:
            media.append(_part_attachment(part, w, policy))
    return "\n".join(t for t in texts if t), media


def _text_only(content: Any, where: str) -> str:
    """Text of a system/assistant/tool message: a string or text parts only (no media)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, Sequence):
        raise ContentBlockError(f"{where}: content must be a string or a list of text parts")
    parts = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "refusal"):
            raise ContentBlockError(f"{where}.content[{i}]: only text parts are allowed in this message")
        parts.append(str(part.get("text") or part.get("refusal") or ""))
    return "\n".join(parts)


def to_langchain(messages: Sequence[Any], policy: RemotePolicy) -> list[Any]:
    """OpenAI ``messages`` → LangChain messages (``ContentBlockError`` names the bad message/part)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    if not isinstance(messages, Sequence) or not messages:
        raise ContentBlockError("messages must be a non-empty list")
    out: list[Any] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise ContentBlockError(f"{where}: a message must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            out.append(SystemMessage(_text_only(m.get("content"), where)))
        elif role == "user":
            text, media = parse_content(m.get("content"), where, policy)
            if media:
                out.append(HumanMessage(content=[{"type": "text", "text": text}, *[a.block() for a in media]]))
            else:
                out.append(HumanMessage(text))
        elif role == "assistant":
            calls = []
            for j, tc in enumerate(m.get("tool_calls") or []):
                fn = tc.get("function") if isinstance(tc, Mapping) else None
                if not isinstance(fn, Mapping) or not fn.get("name") or not tc.get("id"):
                    raise ContentBlockError(f"{where}.tool_calls[{j}]: needs id and function.name")
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except json.JSONDecodeError as exc:
                    raise ContentBlockError(f"{where}.tool_calls[{j}]: arguments are not JSON ({exc})") from None
                if not isinstance(args, dict):
                    raise ContentBlockError(f"{where}.tool_calls[{j}]: arguments must be a JSON object")
                calls.append({"name": fn["name"], "args": args, "id": str(tc["id"]), "type": "tool_call"})
            out.append(AIMessage(content=_text_only(m.get("content"), where), tool_calls=calls))
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise ContentBlockError(f"{where}: a tool message needs tool_call_id")
            out.append(ToolMessage(content=_text_only(m.get("content"), where), tool_call_id=str(m["tool_call_id"])))
        else:
            raise ContentBlockError(f"{where}: unknown role {role!r}; use system, user, assistant or tool")
    return out
