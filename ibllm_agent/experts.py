"""Expert context hooks: small models run on attachments before generation.

ImageBind-LLM sees media only as one fused embedding; a speech recogniser or an object detector can
add what the embedding loses. An *expert* is any object with

- ``name``: the label of its context line, e.g. ``"recognized text"``;
- ``modalities``: the modalities it applies to, e.g. ``("audio", "video")``;
- ``__call__(media) -> str | None``: its finding for one attachment (``None``/empty = nothing).

- optionally ``key``: what identifies the expert's results across processes (default ``name``;
  e.g. ``"whisper_tiny"`` so findings of another Whisper size are not reused).

Before generation the chat model runs every matching expert on every attachment of the message and
adds one line per finding *before* that message's text, where the ImageBind-LLM paper (Fig. 9) puts
the expert output — ahead of the instruction::

    (recognized text: turn left at the next corner)
    what is said here?

Findings are remembered per attachment *content* (``content_hash``), in a ``FindingsStore`` that may
live in a JSON file (the agent keeps one per thread in its workspace), so an expert runs once per file
across a conversation and across processes. The agent attaches the lines to the content block
(``extras["context"]``), so they are also stored with the thread's messages; the chat model renders
lines it finds there and does not run its own experts on such a message.

Real experts: ``SpeechExpert`` (Whisper, ``(recognized text: …)``) and ``VideoObjectsExpert`` (the
video object detector, ``(detected object classes: …)``); ``FunctionExpert`` wraps a plain function.
A failing expert does not fail the chat: its exception is logged (logger ``ibllm_agent.experts``) and
it adds no line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ibllm_agent.types import Media

log = logging.getLogger(__name__)


@runtime_checkable
class Expert(Protocol):
    """A pluggable context provider (see module docstring)."""

    name: str
    modalities: Sequence[str]

    def __call__(self, media: Media) -> str | None: ...


@dataclass(frozen=True)
class FunctionExpert:
    """An ``Expert`` from a function: ``FunctionExpert("recognized text", ("audio",), transcribe)``."""

    name: str
    modalities: tuple[str, ...]
    fn: Callable[[Media], str | None]

    def __call__(self, media: Media) -> str | None:
        return self.fn(media)


def format_line(name: str, finding: str) -> str:
    """One context line: ``({name}: {finding})`` with the finding's whitespace collapsed to one line
    (a multi-line finding would look like protocol lines to the model)."""
    return f"({name}: {' '.join(finding.split())})"


def expert_key(expert: Any) -> str:
    """What identifies ``expert``'s findings across processes: its ``key``, else its ``name``."""
    return str(getattr(expert, "key", None) or expert.name)


# (path, size, mtime_ns) -> sha256: the chat model looks up findings on every model call (every agent
# step re-reads the thread's attachments); a file is hashed again only when it changed.
_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def content_hash(source: Any) -> str | None:
    """sha256 of an attachment's content (a file's bytes, read in 1 MiB pieces, or a byte string);
    ``None`` for anything else (arrays, PIL images, URLs: not remembered)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(source)).hexdigest()
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = os.path.abspath(os.fspath(source).removeprefix("file://"))
    try:
        st = os.stat(path)
        stamp = (path, st.st_size, st.st_mtime_ns)
        with _HASHES_LOCK:
            if stamp in _HASHES:
                return _HASHES[stamp]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                digest.update(piece)
    except (OSError, ValueError):
        return None
    with _HASHES_LOCK:
        if len(_HASHES) > 4096:
            _HASHES.clear()
        _HASHES[stamp] = digest.hexdigest()
    return digest.hexdigest()


class FindingsStore:
    """Expert findings keyed by ``(expert key, modality, content hash)``.

    ``path=None`` keeps them in memory (the newest ``max_entries``); with a path they are a small JSON
    file, re-read when another
    process changed it and rewritten atomically (temp file + rename) after each new finding, so
    several processes working on one thread share what was computed. ``None`` findings ("nothing
    to say") are remembered too; exceptions are not (the next call tries again).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_entries: int | None = None):
        self.path = None if path is None else Path(path)
        self.max_entries = max_entries
        self._data: dict[str, str | None] = {}
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._lock = threading.Lock()

    @staticmethod
    def key(expert: Any, modality: str, digest: str) -> str:
        return f"{expert_key(expert)}|{modality}|{digest}"

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring an unreadable expert findings file %s", self.path)
            return
        if isinstance(data, dict):
            self._data.update({str(k): (None if v is None else str(v)) for k, v in data.items()})
        self._stamp = stamp

    def get(self, key: str) -> tuple[bool, str | None]:
        """``(found, finding)``."""
        with self._lock:
            self._reload()
            return (key in self._data), self._data.get(key)

    def put(self, key: str, finding: str | None) -> None:
        with self._lock:
            self._reload()
            self._data.pop(key, None)
            self._data[key] = finding  # (dicts keep insertion order: the oldest come first)
            if self.path is None:
                while self.max_entries is not None and len(self._data) > self.max_entries:
                    self._data.pop(next(iter(self._data)))
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".findings-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, ensure_ascii=False, indent=0)
            os.replace(tmp, self.path)
            st = self.path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size)

    def __len__(self) -> int:
        with self._lock:
            self._reload()
            return len(self._data)


def remembered(expert: Any, media: Media, store: FindingsStore | None) -> str | None:
    """``expert(media)``, looked up in / saved to ``store`` by content hash (run directly when the
    content cannot be hashed or there is no store)."""
    digest = content_hash(media.source) if store is not None else None
    if digest is None:
        return expert(media)
    key = FindingsStore.key(expert, media.modality, digest)
    found, value = store.get(key)  # type: ignore[union-attr]
    if found:
        return value
    value = expert(media)
    store.put(key, None if value is None else str(value))  # type: ignore[union-attr]
    return value


def run_experts(experts: Iterable[Expert], media: Sequence[Media], store: FindingsStore | None = None) -> list[str]:
    """Context lines of every expert on every attachment whose modality it handles, in order
    (attachments outer, experts inner); findings go through ``store`` when given."""
    experts = list(experts)
    lines: list[str] = []
    for item in media:
        for expert in experts:
            if item.modality not in tuple(expert.modalities):
                continue
            try:
                finding = remembered(expert, item, store)
            except Exception:
                log.warning("expert %r failed on a %s attachment", expert.name, item.modality, exc_info=True)
                continue
            if finding and str(finding).strip():
                lines.append(format_line(expert.name, str(finding)))
    return lines


def with_context(text: str, lines: Sequence[str]) -> str:
    """The context lines, one per line, then ``text`` (the instruction comes last, as in the paper)."""
    if not lines:
        return text
    return "\n".join([*lines, text]) if text else "\n".join(lines)


CONTEXT_KEY = "context"  # content-block extras key holding precomputed context lines


def block_context(content: Any) -> tuple[list[str], bool]:
    """Context lines stored in a message's content blocks (``extras["context"]``) and whether any
    block carried the key (then the message's context is settled: experts do not run on it again)."""
    lines: list[str] = []
    carried = False
    if isinstance(content, list):
        for block in content:
            extras = block.get("extras") if isinstance(block, dict) else None
            if isinstance(extras, dict) and CONTEXT_KEY in extras:
                carried = True
                lines += [str(x) for x in extras[CONTEXT_KEY] or []]
    return lines, carried


# -- the paper's two experts ---------------------------------------------------------------------
class SpeechExpert:
    """``(recognized text: …)`` for audio: Whisper through ``ibllm_agent.tools.speech``.

    ``recognizer``: a ``SpeechRecognizer``, or a zero-argument function returning one (called on first
    use, e.g. a model-pool lookup). ``max_chars`` bounds the line (a song's full lyrics would crowd
    out the instruction in a 2048-token context).
    """

    name = "recognized text"

    def __init__(self, recognizer: Any, *, modalities: Sequence[str] = ("audio",), key: str | None = None,
                 language: str | None = None, max_chars: int = 1000):
        self._recognizer = recognizer
        self.modalities = tuple(modalities)
        self.language = language
        self.max_chars = max_chars
        self.key = key or f"whisper_{getattr(getattr(recognizer, 'settings', None), 'size', 'speech')}"

    def __call__(self, media: Media) -> str | None:
        rec = self._recognizer if hasattr(self._recognizer, "transcribe") else self._recognizer()
        text = rec.transcribe(media.source, self.language).text
        return _clip(text, self.max_chars) or None


class VideoObjectsExpert:
    """``(detected object classes: dog, ball)`` for video: the video object detector of
    ``ibllm_agent.tools.video`` (labels ordered by how often they were seen)."""

    name = "detected object classes"

    def __init__(self, detector: Any, *, modalities: Sequence[str] = ("video",), key: str = "video_objects",
                 vocabulary: Sequence[str] | None = None):
        self._detector = detector
        self.modalities = tuple(modalities)
        self.key = key
        self.vocabulary = vocabulary

    def __call__(self, media: Media) -> str | None:
        det = self._detector if hasattr(self._detector, "detect_video") else self._detector()
        report = det.detect_video(media.source, self.vocabulary)
        return ", ".join(obj.label for obj in report.objects) or None


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
