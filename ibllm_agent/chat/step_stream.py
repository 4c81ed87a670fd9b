"""Incremental reading of streamed model text: trimming and one GPT4Tools step.

Pure text-in/events-out helpers used by ``ChatImageBindLLM._stream`` once ``ibllm_agent.stops``
has cut the stream at its stop strings: they decide as early as the text allows whether a step is a
tool call (complete ``Action Input:`` line), an answer (after ``AI:``) or plain text, so answers
stream while tool calls are emitted whole.
"""

from __future__ import annotations

from typing import Any

from ibllm_agent import protocol as P

__all__ = ["StepStream", "find_ai"]


class _Trim:
    """Streams text with leading and trailing whitespace removed (like ``str.strip`` on the whole)."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body):]
        return body


_MARKERS = ("Thought", "Action", "AI:", "Observation")


class StepStream:
    """Incremental reading of one model step into stream events.

    Events: ``("reasoning", thought)`` when the first ``Thought:`` line is complete; ``("content",
    text)`` for answer text (after ``AI:``, or all text when the output is not in the protocol);
    ``("step", raw_text)`` when an ``Action Input:`` line is complete (or at the end for a step that
    needs the final parse). Plain (tool-less) calls stream everything as content.
    """

    def __init__(self, prefill: str, tool_mode: bool):
        self.buf = prefill
        self.tool_mode = tool_mode
        self.mode = "head" if tool_mode else "plain"
        self.answer_from = 0  # index in buf where streamed content starts
        self.sent = 0  # chars of buf[answer_from:] already handed to the trimmer
        self.trim = _Trim()
        self.thought_sent = False

    def feed(self, piece: str) -> list[tuple[str, Any]]:
        self.buf += piece
        events: list[tuple[str, Any]] = []
        if self.mode == "head":
            self._scan_head(events)
        if self.mode in ("answer", "plain"):
            new = self.buf[self.answer_from + self.sent :]
            self.sent += len(new)
            text = self.trim.push(new)
            if text:
                events.append(("content", text))
        return events

    def _scan_head(self, events: list[tuple[str, Any]]) -> None:
        raw = self.buf
        if not self.thought_sent:
            th = P._THOUGHT_RE.search(raw)
            if th and raw.find("\n", th.start(1)) >= 0:
                events.append(("reasoning", th.group(1).strip()))
                self.thought_sent = True
        ai = find_ai(raw)
        lines = raw.split("\n")
        complete, partial = lines[:-1], lines[-1]
        end = 0
        for i, line in enumerate(complete):
            end += len(line) + 1
            if line.lstrip().startswith("Action Input:") and (ai < 0 or end - 1 <= ai):
                # A complete Action Input line before any "AI:": the step is decided (parse_step's rule).
                events.append(("step", "\n".join(lines[: i + 1])))
                self.mode = "done"
                return
        if ai >= 0:
            self.mode, self.answer_from = "answer", ai + len(P.AI_PREFIX) + 1
            return
        protocol_seen = any(line.strip() and line.lstrip().startswith(_MARKERS) for line in complete)
        first = next((line for line in complete if line.strip()), None)
        if not protocol_seen and first is not None and not first.lstrip().startswith(_MARKERS):
            self.mode = "plain"
            return
        head = partial.lstrip()
        if not protocol_seen and first is None and len(head) >= 16 and not head.startswith(_MARKERS):
            self.mode = "plain"

    def finish(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        if self.mode == "head":
            step = P.parse_step(self.buf)
            if step.kind == "final":
                if step.thought is not None and not self.thought_sent:
                    events.append(("reasoning", step.thought))
                if step.answer:
                    events.append(("content", step.answer))
            else:
                if step.thought is not None and not self.thought_sent:
                    events.append(("reasoning", step.thought))
                events.append(("step", self.buf))
        return events


def find_ai(raw: str) -> int:
    """Index of the first ``AI:`` that is not part of a word, or -1 (after cutting observations)."""
    start = 0
    while True:
        i = raw.find(f"{P.AI_PREFIX}:", start)
        if i < 0:
            return -1
        if i == 0 or not raw[i - 1].isalnum():
            return i
        start = i + 1
