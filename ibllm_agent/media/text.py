"""CLIP byte-level BPE tokeniser (ImageBind's text modality), written against the vocab file that
ships inside ``open-clip-torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``; only the file is
used, open_clip itself is not imported).

Cleaning: ftfy.fix_text → html.unescape twice → strip → collapse whitespace → lower-case.
Encoding: [SOT=49406] + BPE ids + [EOT=49407], truncated to 77 (no forced EOT, as the reference),
zero-padded ⇒ int64 [77].
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
from collections.abc import Sequence
from pathlib import Path

CONTEXT_LENGTH = 77
SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2  # vocab = 256 bytes ×2 (with/without </w>) + merges + 2 specials


def vocab_path() -> Path:
    """Location of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        from ibllm_agent.errors import ConfigError

        raise ConfigError("the CLIP BPE vocab needs the open-clip-torch package (pip install open-clip-torch)")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (GPT-2/CLIP scheme):
    printable latin-1 bytes map to themselves, the rest to code points 256+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    # Insertion order matters: the vocab lists the printable bytes first, then the remapped ones.
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


class ClipTokenizer:
    """Stateless after construction; ``encode`` results are memoised per word."""

    def __init__(self, vocab_file: str | Path | None = None):
        import regex

        path = Path(vocab_file) if vocab_file is not None else vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        base = list(_byte_to_unicode().values())
        tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges]
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(tokens)}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        # As the reference: a literal special-token string in the text maps to the special id.
        self._cache: dict[str, list[int]] = {"<|startoftext|>": [self.sot], "<|endoftext|>": [self.eot]}
        # Contractions, letter runs, single digits, runs of other non-space symbols.
        self._pattern = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._spaces = regex.compile(r"\s+")

    def clean(self, text: str) -> str:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return self._spaces.sub(" ", text).strip().lower()

    def _bpe(self, word: str) -> list[int]:
        """Merge the symbols of one pre-token by rank until no known pair remains."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(itertools.pairwise(symbols))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        self._cache[word] = ids
        return ids

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """BPE ids of the cleaned text, without SOT/EOT. With ``max_tokens``, stops once that many
        ids exist (the prefix is identical; long inputs are cut at 77 anyway)."""
        ids: list[int] = []
        for match in self._pattern.finditer(self.clean(text)):
            word = "".join(self.byte_encoder[b] for b in match.group().encode("utf-8"))
            ids.extend(self._bpe(word))
            if max_tokens is not None and len(ids) >= max_tokens:
                return ids[:max_tokens]
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, *, force_eot: bool = False):
        """int64 [B, context_length] (or [context_length] for one string).

        Over-long sequences are cut at ``context_length`` with no EOT, like the reference (its text
        head picks the argmax id, which is then not an EOT); ``force_eot=True`` ends them with EOT.
        """
        import torch

        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        out = torch.zeros(len(batch), context_length, dtype=torch.long)
        for row, text in enumerate(batch):
            ids = [self.sot, *self.encode(text, max_tokens=context_length), self.eot]
            if len(ids) > context_length:
                ids = ids[:context_length]
                if force_eot:
                    ids[-1] = self.eot
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out[0] if single else out


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    """The process-wide tokenizer (vocab read once, ~0.3 s)."""
    return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH):
    """Reference ``load_and_transform_text``: int64 [77] for a str, [B, 77] for a list."""
    return get_tokenizer()(texts, context_length)
