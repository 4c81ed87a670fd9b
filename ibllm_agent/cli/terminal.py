"""Terminal helpers for the interactive prompt: safe printing of model text and line editing.

Model output is untrusted text: a stray ``\\r`` would move the cursor back and let later text
overwrite what the user read, an ``ESC [2J`` would clear the screen. ``printable`` keeps newlines
and tabs and shows every other control character as an escape (``\\r``, ``\\x1b``) instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["HISTORY_LENGTH", "LineEditor", "printable"]

HISTORY_LENGTH = 1000
# C0 controls except \t and \n, DEL, C1 controls; plus the Unicode line/paragraph separators and
# bidi overrides, which reorder or break what the terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x08": "\\b", "\x07": "\\a", "\x1b": "\\x1b"}


def printable(text: str) -> str:
    """``text`` with control characters escaped (newlines and tabs kept)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                             else f"\\u{ord(m.group()):04x}"), text)


class LineEditor:
    """``input()`` with GNU readline line editing (arrows, Ctrl-A/E, ...) and a history of earlier
    lines (Up/Down), kept across sessions in ``history_file`` when given."""

    def __init__(self, history_file: str | os.PathLike[str] | None = None):
        self.history_file = Path(history_file) if history_file is not None else None
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input()
            self._readline = None
            return
        self._readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        if self.history_file is not None and self.history_file.is_file():
            try:
                readline.read_history_file(str(self.history_file))
            except OSError:  # unreadable history is not worth failing the session for
                pass

    def read(self, prompt: str) -> str:
        return input(prompt)

    def save(self) -> None:
        """Write the history file (called when the session ends)."""
        if self._readline is None or self.history_file is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(str(self.history_file))
        except OSError:
            pass
