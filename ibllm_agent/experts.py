"""Expert context hooks: small models run on attachments before generation.

ImageBind-LLM sees media only as one fused embedding; a speech recogniser or an object detector can
add what the embedding loses. An *expert* is any object with

- ``name``: the label of its context line, e.g. ``"recognized text"``;
- ``modalities``: the modalities it applies to, e.g. ``("audio", "video")``;
- ``__call__(media) -> str | None``: its finding for one attachment (``None``/empty = nothing).

Before generation the chat model runs every matching expert on every attachment of the message and
adds one line per finding to that message's text::

    what is said here?
    (recognized text: turn left at the next corner)

The tools issues provide real experts; ``FunctionExpert`` wraps a plain function. A failing expert
does not fail the chat: its exception is logged (logger ``ibllm_agent.experts``) and it adds no line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


def run_experts(experts: Iterable[Expert], media: Sequence[Media]) -> list[str]:
    """Context lines of every expert on every attachment whose modality it handles, in order
    (attachments outer, experts inner)."""
    experts = list(experts)
    lines: list[str] = []
    for item in media:
        for expert in experts:
            if item.modality not in tuple(expert.modalities):
                continue
            try:
                finding = expert(item)
            except Exception:
                log.warning("expert %r failed on a %s attachment", expert.name, item.modality, exc_info=True)
                continue
            if finding and str(finding).strip():
                lines.append(format_line(expert.name, str(finding)))
    return lines


def with_context(text: str, lines: Sequence[str]) -> str:
    """``text`` followed by the context lines, one per line."""
    if not lines:
        return text
    return "\n".join([text, *lines]) if text else "\n".join(lines)
