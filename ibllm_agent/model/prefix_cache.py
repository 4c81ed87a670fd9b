"""KV caches of earlier generations, kept under a byte budget for prefix reuse across calls and turns.

The engine (``generation.Generator``) stores, after each single-prompt call with a ``context_key``,
the KV cache of everything it fed (prompt + generated tokens) here. The next call with the same key
takes the entry sharing the longest token prefix with its prompt and prefills only the rest:

- within an agent turn, a step's prompt extends the previous step's (prompt + output +
  observation): the entry is taken whole and cropped to the common prefix;
- across turns and threads, a prompt often shares only a part (the system prompt and tool list, or
  the rendered history up to the new input): the common prefix is *copied* out, so the entry stays
  for the thread it came from (cropping it would throw away that thread's longer prefix).

The key must identify everything besides the token ids that shaped the KV: the visual input and
the weights' state (``ImageBindLLM._context_key``). Entries with another key are never used, so a
change of weights or media never reuses stale state; a change of rendered history changes the
token ids, so only the part before the change is reused.

Memory: entries are dropped least-recently-used first while their KV bytes exceed ``max_bytes``
(default 1 GiB; a LLaMA-7B fp16 KV holds 512 KiB per token, so ~2 000 tokens of history) or their
count exceeds ``max_entries``. An entry larger than the whole budget is not kept.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BYTES = 1 << 30
# A taken entry whose unmatched tail is at most this share of it is cropped in place (an agent's
# next step: only the re-tokenised end of the last output differs); a longer tail is another
# conversation's state and the shared prefix is copied instead.
_CROP_IN_PLACE_TAIL = 0.25


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def kv_bytes(past: Any) -> int:
    """Bytes of the key/value tensors of a transformers cache (0 if its layout is unknown)."""
    total = 0
    for layer in getattr(past, "layers", ()):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "element_size"):
                total += t.numel() * t.element_size()
    return total


def crop(past: Any, keep: int) -> bool:
    """Crop a transformers cache to its first ``keep`` positions; False if it cannot be cropped."""
    if not getattr(past, "is_croppable", True) or not hasattr(past, "crop"):
        return False
    drop = past.get_seq_length() - keep
    if drop > 0:
        past.crop(-drop)  # transformers >= 5: a negative count removes that many trailing tokens
    return past.get_seq_length() == keep


def copy_prefix(past: Any, keep: int) -> Any | None:
    """A new cache holding the first ``keep`` positions of ``past`` (which is left unchanged)."""
    layers = getattr(past, "layers", None)
    if layers and all(getattr(layer, "keys", None) is not None for layer in layers):
        out = type(past)()
        for i, layer in enumerate(layers):
            # [B, heads, T, head_dim] → the first keep positions, as new storage
            out.update(layer.keys[:, :, :keep].clone(), layer.values[:, :, :keep].clone(), i)
        return out if out.get_seq_length() == keep else None
    twin = copy.deepcopy(past)
    return twin if crop(twin, keep) else None


@dataclass
class _Entry:
    key: Hashable
    tokens: list[int]  # the ids whose keys/values ``past`` holds, in order
    past: Any
    nbytes: int


@dataclass
class PrefixCacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0  # calls that reused a prefix
    copies: int = 0  # of those, how many copied the prefix out of an entry that stayed
    evictions: int = 0


class PrefixCache:
    """Thread-safe LRU of (context key, token ids, KV cache) under a byte budget (see module doc)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = 16):
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)
        self._entries: list[_Entry] = []  # least recently used first
        self._lock = threading.Lock()
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle (a model copied with its engine): new lock
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def take(self, key: Hashable, prompt: Sequence[int]) -> tuple[Any, int]:
        """(KV cache holding the first ``n`` prompt tokens, n) for the best entry under ``key``, or
        (None, 0). At least one prompt token is left to prefill (its logits pick the next token).
        The returned cache belongs to the caller: give it back extended with ``put``."""
        import torch

        with self._lock:
            best, best_n = None, 0
            for e in self._entries:
                if e.key == key:
                    n = min(common_prefix(e.tokens, prompt), len(prompt) - 1)
                    if n > best_n:
                        best, best_n = e, n
            if best is None:
                return None, 0
            self._entries.remove(best)
            in_place = len(best.tokens) - best_n <= _CROP_IN_PLACE_TAIL * len(best.tokens)
            if not in_place:
                # Copy under the lock: no other caller may take (and crop) the entry meanwhile. It
                # stays, most recently used, for the conversation it came from.
                self._entries.append(best)
                with torch.inference_mode():
                    past = copy_prefix(best.past, best_n)
            self._account()
        if in_place:
            with torch.inference_mode():
                past = best.past if crop(best.past, best_n) else None
        if past is None:
            return None, 0
        with self._lock:
            self.stats.hits += 1
            self.stats.copies += not in_place
        return past, best_n

    def put(self, key: Hashable, tokens: list[int], past: Any) -> None:
        """Keep ``past`` (the KV of ``tokens``) as the most recently used entry under ``key``."""
        nbytes = kv_bytes(past)
        with self._lock:
            # An entry whose tokens the new one extends adds nothing: drop it.
            self._entries = [e for e in self._entries
                             if not (e.key == key and common_prefix(e.tokens, tokens) == len(e.tokens))]
            if nbytes <= self.max_bytes:
                self._entries.append(_Entry(key, list(tokens), past, nbytes))
            while self._entries and (sum(e.nbytes for e in self._entries) > self.max_bytes
                                     or len(self._entries) > self.max_entries):
                self._entries.pop(0)
                self.stats.evictions += 1
            self._account()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._account()

    def _account(self) -> None:
        self.stats.entries = len(self._entries)
        self.stats.bytes = sum(e.nbytes for e in self._entries)
