"""Expert memoisation: experts and the captioner run once per attachment content, not on every model
call.

An agent turn calls the chat model once per step and every call re-reads the thread's attachments;
``Findings`` remembers ``expert(media)`` per (expert key, modality, sha256 of the attachment's content)
in a ``ibllm_agent.experts.FindingsStore`` — in memory by default, or the caller's (e.g. a JSON file
shared across processes: ``ChatImageBindLLM(findings_store=FindingsStore(path))``).
"""

from __future__ import annotations

from typing import Any

from ibllm_agent.experts import FindingsStore, remembered
from ibllm_agent.types import Media

__all__ = ["Findings", "Remembered"]


class Findings:
    """``expert(media)`` results remembered per attachment content (thread-safe)."""

    def __init__(self, store: FindingsStore | None = None):
        # In memory: the last 256 findings (a long-lived chat model sees many attachments).
        self.store = store if store is not None else FindingsStore(max_entries=256)

    def __len__(self) -> int:
        return len(self.store)

    def get(self, expert: Any, media: Media) -> str | None:
        """``expert(media)``, remembered when the attachment's content can be hashed (files, bytes);
        an exception is not remembered: the next call tries again."""
        return remembered(expert, media, self.store)


class Remembered:
    """An expert whose findings ``findings`` remembers (what ``run_experts`` is given)."""

    def __init__(self, findings: Findings, expert: Any):
        self.findings, self.expert = findings, expert
        self.name, self.modalities = expert.name, expert.modalities

    def __call__(self, media: Media) -> str | None:
        return self.findings.get(self.expert, media)
