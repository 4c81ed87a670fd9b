"""Stop strings: the one implementation of finding, cutting at and streaming up to a stop string.

Used by the decoder's detokenizer (``model/detokenizer.py``), the chat model (whole texts and
streams), the GPT4Tools protocol parser and the scripted test generator, so they all agree on where
a text ends: right before the *earliest* occurrence of any stop string, the stop string excluded.
Empty stop strings are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["StopCutter", "cut_at_stop", "find_stop", "partial_stop_len"]


def find_stop(text: str, stops: Iterable[str], start: int = 0) -> int:
    """Index of the earliest stop string in ``text[start:]`` (as an index into ``text``), or -1."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cut = find_stop(text, stops)
    return (text[:cut], True) if cut >= 0 else (text, False)


def partial_stop_len(text: str, stops: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string: the part a
    stream must hold back, because the next piece may complete the stop string."""
    best = 0
    for s in stops:
        # Only lengths above the best so far can improve it; the longest match per stop wins.
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class StopCutter:
    """Cuts a text stream at the earliest stop string, holding back a tail that could start one.

    ``feed(piece)`` returns the text that is safe to show; once a stop string is complete it returns
    the text before it, sets ``stopped`` and returns "" from then on. ``flush()`` hands out the held
    tail when the stream ended without a stop string.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""  # held-back text (a possible stop-string start) + the newest piece
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buf += piece
        text, found = cut_at_stop(self.buf, self.stops)
        if found:
            self.stopped = True
            self.buf = ""
            return text
        hold = partial_stop_len(self.buf, self.stops)
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out
