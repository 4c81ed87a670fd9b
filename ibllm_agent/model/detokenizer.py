"""Incremental detokenisation with stop strings, shared by ``generate`` and ``stream``.

One ``Detokenizer`` per sequence. After each new token it re-decodes the completion ids and hands
out the *safe* new text:

- a trailing U+FFFD run is held back: with SentencePiece byte fallback a multi-byte character is
  spread over several ``<0xNN>`` pieces and decodes to U+FFFD until its last byte arrives;
- a suffix that could be the start of a stop string is held back, so stop text is never emitted;
- a stop string is searched for in the decoded *text* (tokens can straddle it); the final text ends
  right before its first occurrence.

Decoding is incremental (the vLLM/TGI "prefix offset" scheme): only a short window of ids from
the last complete-character boundary is decoded per token, and the new text is the window's
decode minus the decode of its already-read part, so a token costs O(1) instead of O(length) and
tokenizers that drop a leading space from the first decoded piece (SentencePiece) are handled.

``generate`` joins the same deltas ``stream`` yields, so both give the same text by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

from ibllm_agent.model.tokenizer import Tokenizer
from ibllm_agent.stops import find_stop, partial_stop_len

_REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # decode(ids), the whole completion so far
        self.emitted = 0  # number of characters of ``text`` handed out
        self.stopped = False
        # ids[_prefix:_read] were decoded already and end on a complete character; their text is
        # ``_prefix_text``. ``_stable`` is the text of ids[:_read].
        self._prefix = self._read = 0
        self._prefix_text = ""
        self._stable = ""

    def _decode_incremental(self) -> str:
        window = self.tokenizer.decode(self.ids[self._prefix :])
        if len(window) > len(self._prefix_text) and not window.endswith(_REPLACEMENT):
            # The new ids end on a complete character: commit their text and slide the window.
            self._stable += window[len(self._prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            self._prefix_text = self.tokenizer.decode(self.ids[self._prefix : self._read])
            return self._stable
        return self._stable + window[len(self._prefix_text) :]  # may end in U+FFFD (held back)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became safe to show (maybe "")."""
        self.ids.append(int(token_id))
        self.text = self._decode_incremental()
        if self.stop:
            cut = self._first_stop()
            if cut is not None:
                self.stopped = True
                self.text = self.text[:cut]
                return self._emit_upto(cut)
        safe = len(self.text.rstrip(_REPLACEMENT))
        safe -= self._stop_prefix_len(self.text[:safe])
        return self._emit_upto(safe)

    def flush(self) -> str:
        """The sequence ended (EOS or length): everything not yet shown, held-back text included."""
        return self._emit_upto(len(self.text))

    def _emit_upto(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _first_stop(self) -> int | None:
        # Only text that could contain a *new* occurrence is searched: everything up to ``emitted``
        # was checked before, so start (longest stop - 1) characters earlier.
        start = max(0, self.emitted - max(map(len, self.stop)) + 1)
        cut = find_stop(self.text, self.stop, start)
        return cut if cut >= 0 else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        return partial_stop_len(text, self.stop)
