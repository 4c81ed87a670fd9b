"""Guided decoding: a per-row ``Guide`` restricts what the engine may generate next.

The engine knows no protocol. After every token it asks each guided row's ``Guide`` for a
constraint on what follows the row's completion text so far:

- ``None``: decode freely;
- ``Choose(anchor, options)``: the text that follows must be exactly one of ``options``. The engine
  scores every option as a whole (the sum of its tokens' log-probabilities given the text so far,
  computed in extra forward passes whose keys/values are then cropped off the cache), picks one with
  the call's sampler (greedy: the most likely) and forces its tokens. Scoring whole options, not
  token by token, matters when options share a first token: the model's preference for a later
  token (e.g. the noun of ``fetch_kate``) decides between them;
- ``Filter(viable, end_ok, instead_of_end)``: each next token's text must keep ``viable(text +
  piece)`` true (EOS only when ``end_ok``). Candidates are tried in the model's order (the top
  ``TOP_K`` first, then the whole vocabulary); the sampler then picks among the viable ones. When the
  model's favourite is a line end that is not allowed yet and ``instead_of_end`` is viable (e.g. the
  separator before a required next field), that piece is taken instead: the model ended the value,
  the grammar ends it the only way it allows.

``PieceTable`` gives each token id the text it appends (``decode(anchor + [id])`` minus
``decode(anchor)``, so SentencePiece's leading-space handling and byte pieces are right for any
``Tokenizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ibllm_agent.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ibllm_agent.model.tokenizer import Tokenizer

__all__ = ["TOP_K", "Choose", "Filter", "Guide", "PieceTable", "option_ids", "row_guides"]

TOP_K = 32  # candidates checked before the whole vocabulary is scanned


@dataclass(frozen=True)
class Choose:
    """The continuation must be one of ``options`` (full texts, e.g. ``" get_kate\\n"``).

    ``anchor``: the end of the text generated so far (e.g. the current line), used to tokenise the
    options the way they would be tokenised after it.
    """

    anchor: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Filter:
    """Every next token must keep ``viable(text_so_far + piece)`` true; EOS only when ``end_ok``."""

    viable: Callable[[str], bool]
    end_ok: bool = True
    instead_of_end: str | None = None


@runtime_checkable
class Guide(Protocol):
    """A row's grammar: the constraint on what follows ``text`` (the completion so far)."""

    def constraint(self, text: str) -> Choose | Filter | None: ...


def row_guides(guide: Guide | Sequence[Guide | None] | None, rows: int) -> list[Guide | None]:
    """``Sampling.guide`` spread over a batch: one guide for every row, or one (or None) per row."""
    if guide is None:
        return [None] * rows
    if isinstance(guide, Guide):
        return [guide] * rows
    if not isinstance(guide, Sequence) or isinstance(guide, (str, bytes)):
        raise ConfigError(f"Sampling.guide must be a Guide, a sequence of Guides or None, got {type(guide).__name__}")
    guides = list(guide)
    if len(guides) != rows:
        raise ConfigError(f"Sampling.guide holds {len(guides)} guides for a batch of {rows} prompts")
    for g in guides:
        if g is not None and not isinstance(g, Guide):
            raise ConfigError(f"Sampling.guide entries must be Guides or None, got {type(g).__name__}")
    return guides


class PieceTable:
    """Token id → the text it appends to a completion (computed lazily, cached)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.vocab = int(tokenizer.vocab_size)
        anchor = tokenizer.encode("a", bos=False, eos=False)
        self._anchor = anchor[-1:] if anchor else []
        self._anchor_text = tokenizer.decode(self._anchor)
        self._texts: dict[int, str] = {}
        self._found: dict[str, int | None] = {}
        self._special = {i for i in (getattr(tokenizer, "bos_id", -1), getattr(tokenizer, "eos_id", -1),
                                     getattr(tokenizer, "pad_id", -1)) if 0 <= i < self.vocab}

    def text(self, token_id: int) -> str:
        if token_id in self._special:
            return ""
        t = self._texts.get(token_id)
        if t is None:
            t = self.tokenizer.decode([*self._anchor, token_id])[len(self._anchor_text):]
            self._texts[token_id] = t
        return t

    def find(self, text: str) -> int | None:
        """The id of a token whose whole text is ``text`` (e.g. a separator), or None."""
        if text not in self._found:
            self._found[text] = next(
                (i for i in range(self.vocab) if i not in self._special and self.text(i) == text), None
            )
        return self._found[text]


def option_ids(tokenizer: Tokenizer, anchor: str, option: str) -> list[int] | None:
    """The token ids that continue ``anchor`` with ``option``: the tail of ``encode(anchor + option)``
    after ``encode(anchor)``. None when the option would merge into the anchor's last token (the
    generated tokens cannot be re-split) or adds nothing."""
    head = tokenizer.encode(anchor, bos=False, eos=False) if anchor else []
    full = tokenizer.encode(anchor + option, bos=False, eos=False)
    if full[: len(head)] != head or len(full) == len(head):
        return None
    return full[len(head):]


def filter_pick(
    logits: torch.Tensor, rule: Filter, text: str, pieces: PieceTable, eos_id: int
) -> tuple[torch.Tensor, int | None]:
    """Mask ``logits [V]`` to the tokens ``rule`` allows after ``text``.

    Returns the masked logits and, when the grammar replaces the model's wish to end here by
    ``rule.instead_of_end``, that token's id (to be taken as is). With no viable token at all the
    logits come back unmasked (decoding goes on freely rather than stopping the call).
    """
    import torch

    order = torch.topk(logits, min(TOP_K, logits.shape[-1])).indices.tolist()
    first = order[0]
    if rule.instead_of_end is not None and not rule.end_ok and _ends(first, pieces, eos_id):
        swap = pieces.find(rule.instead_of_end)
        if swap is not None and rule.viable(text + rule.instead_of_end):
            return logits, swap
    allowed = [t for t in order if _allowed(t, rule, text, pieces, eos_id)]
    if not allowed:  # scan the rest of the vocabulary in the model's order
        rest = torch.argsort(logits, descending=True).tolist()[len(order):]
        allowed = [t for t in rest if _allowed(t, rule, text, pieces, eos_id)][:TOP_K]
    if not allowed:
        return logits, None
    masked = torch.full_like(logits, float("-inf"))
    idx = torch.tensor(allowed, device=logits.device)
    masked[idx] = logits[idx]
    return masked, None


def _ends(token: int, pieces: PieceTable, eos_id: int) -> bool:
    return token == eos_id or "\n" in pieces.text(token)


def _allowed(token: int, rule: Filter, text: str, pieces: PieceTable, eos_id: int) -> bool:
    if token == eos_id:
        return rule.end_ok
    piece = pieces.text(token)
    return bool(piece) and rule.viable(text + piece)
