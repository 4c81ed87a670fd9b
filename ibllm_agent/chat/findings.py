"""Expert memoisation: experts and the captioner run once per attachment, not on every model call.

An agent turn calls the chat model once per step and every call re-reads the thread's attachments;
``Findings`` remembers ``expert(media)`` per (expert, modality, attachment content), the last 256.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any

from ibllm_agent.types import Media

__all__ = ["Findings", "Remembered", "source_key"]


def source_key(source: Any) -> tuple | None:
    """What identifies an attachment's content for remembering expert findings: a file's path, size
    and modification time, or a digest of bytes; ``None`` (do not remember) for other objects."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.sha1(bytes(source)).hexdigest())
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source).removeprefix("file://")
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return ("file", os.path.abspath(path), st.st_size, st.st_mtime_ns)
    return None


class Findings:
    """``expert(media)`` results remembered per attachment content (LRU, thread-safe)."""

    def __init__(self, size: int = 256):
        self.size = size
        # (expert id, modality, source key) -> finding
        self._items: OrderedDict[tuple, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, expert: Any, media: Media) -> str | None:
        """``expert(media)``, remembered when the attachment's content can be identified."""
        key = source_key(media.source)
        if key is None:
            return expert(media)
        key = (id(expert), media.modality, key)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = expert(media)  # an exception is not remembered: the next call tries again
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class Remembered:
    """An expert whose findings ``findings`` remembers (what ``run_experts`` is given)."""

    def __init__(self, findings: Findings, expert: Any):
        self.findings, self.expert = findings, expert
        self.name, self.modalities = expert.name, expert.modalities

    def __call__(self, media: Media) -> str | None:
        return self.findings.get(self.expert, media)
