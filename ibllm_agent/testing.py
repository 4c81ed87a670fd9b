"""Test doubles: a text generator whose outputs are known.

``ScriptedGenerator`` satisfies ``ibllm_agent.types.TextGenerator`` without any weights. It returns
queued texts in order and records every call, so tests of the protocol, the chat model and the agent
can assert both what the model *saw* (the final prompt, the media, the sampling settings) and what
happens with a given model output::

    from ibllm_agent.testing import ScriptedGenerator
    gen = ScriptedGenerator(["Thought: Do I need to use a tool? No\\nAI: hello"])
    chat = ChatImageBindLLM(model=gen)
    chat.invoke("hi").content          # -> "hello"
    prompt, media, sampling = gen.calls[0]

It behaves like a real model where that matters to callers:

- ``sampling.stop``: the output is cut at the earliest stop string (the stop string itself is not
  returned), and ``finish_reason`` is ``"stop"``;
- ``sampling.max_new_tokens``: the output is cut after that many "tokens" (``finish_reason``
  ``"length"``); a token here is one whitespace-delimited piece (see ``count_tokens``);
- ``stream`` yields the (stop-cut) text in small pieces of at most ``chunk_size`` characters, so
  stream parsers see lines split across chunks;
- a callable in ``outputs`` is called with ``(prompt, media, sampling)`` and returns the text, for
  outputs that depend on the prompt.

When the queue is empty, ``generate`` raises ``ScriptExhaustedError`` (an ``IbllmError``) naming how
many outputs were scripted, unless ``repeat_last=True`` (then the last output is returned again).
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ibllm_agent.errors import ConfigError, IbllmError
from ibllm_agent.stops import cut_at_stop
from ibllm_agent.types import CacheSettings, Generation, Media, Sampling

ScriptedOutput = str | Callable[[str, Sequence[Media], Sampling], str]

_TOKEN = re.compile(r"\S+\s*|\s+")


class ScriptExhaustedError(IbllmError, RuntimeError):
    """A ``ScriptedGenerator`` was asked for more outputs than were scripted."""


SCRIPTED_PREFIX = "scripted:"


def load_scripted(spec: str | Path) -> ScriptedGenerator:
    """The ``ScriptedGenerator`` of a ``--model scripted:PATH.json`` value (the prefix is optional):
    it replays the JSON list of strings in the file (a testing aid: drive the CLI without weights).

    Raises:
        ConfigError: the file is missing or unreadable, not JSON, or not a list of strings.
    """
    text = str(spec)
    path = Path(text[len(SCRIPTED_PREFIX):] if text.startswith(SCRIPTED_PREFIX) else text).expanduser()
    try:
        outputs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"scripted model file not found: {path}") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"cannot read scripted model file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"scripted model file {path} is not valid JSON: {exc}") from None
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ConfigError(f"scripted model file {path} must hold a JSON list of strings")
    return ScriptedGenerator(outputs)


class ScriptedGenerator:
    """A ``TextGenerator`` that returns queued outputs and records what it was called with.

    Args:
        outputs: texts (or callables ``(prompt, media, sampling) -> str``) returned in order.
        prompt_template: model template name in ``ibllm_agent.prompts`` the chat model wraps prompts
            with (``"raw"`` = unchanged, so tests see the protocol text exactly).
        context_length: the context window reported to callers (in ``count_tokens`` units).
        chunk_size: the maximum number of characters per ``stream`` piece.
        repeat_last: when the queue is empty, repeat the last output instead of raising.

    Attributes:
        calls: one ``(prompt, media, sampling)`` tuple per ``generate``/``stream`` call, in order;
            ``media`` is a list (empty when none was passed), ``sampling`` the ``Sampling`` used.
        caches: the ``CacheSettings`` (or ``None``) of each call, parallel to ``calls``.
    """

    def __init__(
        self,
        outputs: Sequence[ScriptedOutput] = (),
        prompt_template: str = "raw",
        context_length: int = 4096,
        *,
        chunk_size: int = 3,
        repeat_last: bool = False,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.prompt_template = prompt_template
        self.context_length = context_length
        self.chunk_size = chunk_size
        self.repeat_last = repeat_last
        self.calls: list[tuple[str, list[Media], Sampling]] = []
        self.caches: list[CacheSettings | None] = []
        self._queue: deque[ScriptedOutput] = deque(outputs)
        self._scripted = len(self._queue)
        self._last: ScriptedOutput | None = None
        # The chat model's async paths call us from worker threads; keep queue + records consistent.
        self._lock = threading.Lock()

    # -- script management -------------------------------------------------------------------------
    def push(self, *outputs: ScriptedOutput) -> None:
        """Queue more outputs."""
        with self._lock:
            self._queue.extend(outputs)
            self._scripted += len(outputs)

    @property
    def remaining(self) -> int:
        """How many queued outputs are left."""
        return len(self._queue)

    @property
    def prompts(self) -> list[str]:
        """The prompts of all calls so far."""
        return [c[0] for c in self.calls]

    # -- TextGenerator -----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Whitespace-delimited pieces: deterministic and close enough to a tokenizer for tests."""
        return len(text.split())

    def generate(
        self,
        prompt: str,
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
    ) -> Generation:
        sampling = sampling or Sampling()
        media_list = list(media or [])
        with self._lock:
            self.calls.append((prompt, media_list, sampling))
            self.caches.append(cache)
            out = self._next()
        text = out(prompt, media_list, sampling) if callable(out) else out
        text, finish = _apply_limits(text, sampling)
        return Generation(
            text=text,
            prompt_tokens=self.count_tokens(prompt),
            completion_tokens=self.count_tokens(text),
            finish_reason=finish,
        )

    def stream(
        self,
        prompt: str,
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
    ) -> Iterator[str]:
        # Record the call eagerly (like a real model starts prefill on call), then yield lazily.
        gen = self.generate(prompt, media, sampling=sampling, cache=cache)
        return _pieces(gen.text, self.chunk_size)

    def _next(self) -> ScriptedOutput:
        if self._queue:
            self._last = self._queue.popleft()
            return self._last
        if self.repeat_last and self._last is not None:
            return self._last
        raise ScriptExhaustedError(
            f"ScriptedGenerator has no output left for call #{len(self.calls)}: "
            f"{self._scripted} output(s) were scripted"
        )

    def __repr__(self) -> str:
        return (
            f"ScriptedGenerator(remaining={self.remaining}, calls={len(self.calls)}, "
            f"prompt_template={self.prompt_template!r})"
        )


def _apply_limits(text: str, sampling: Sampling) -> tuple[str, str]:
    """Cut ``text`` at the earliest stop string, then at ``max_new_tokens`` pieces."""
    finish = "eos"
    text, found = cut_at_stop(text, sampling.stop)
    if found:
        finish = "stop"
    if sampling.max_new_tokens is not None and sampling.max_new_tokens >= 0:
        pieces = [m.group(0) for m in _TOKEN.finditer(text)]
        words = [p for p in pieces if p.strip()]
        if len(words) > sampling.max_new_tokens:
            kept, n = [], 0
            for p in pieces:
                if p.strip():
                    if n == sampling.max_new_tokens:
                        break
                    n += 1
                kept.append(p)
            text, finish = "".join(kept).rstrip(), "length"
    return text, finish


def _pieces(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]
