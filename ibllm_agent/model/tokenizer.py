"""Tokenizers: LLaMA's SentencePiece model, and a tiny one trained on the fly for tests and presets.

The engine (``generation.py``) needs only the small ``Tokenizer`` protocol below, so any tokenizer
with BOS/EOS ids, ``encode`` and ``decode`` fits. ``SentencePieceTokenizer`` wraps LLaMA's
``tokenizer.model`` (unk 0, BOS 1, EOS 2, pad -1: the pad id is *not* a row of the embedding table).

``tiny_tokenizer()`` trains a byte-fallback BPE with the same special ids and normaliser settings as
LLaMA's (identity normalisation, no whitespace collapsing, split digits, dummy prefix) on a small
built-in corpus of instruction-following and GPT4Tools-style text, and caches the ``.model`` file
keyed by a hash of corpus and settings, so only the first call in a machine's life pays the ~0.5 s.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from ibllm_agent.errors import ConfigError, TokenizerError, TokenizerNotFoundError

# LLaMA's SentencePiece special ids (Meta's tokenizer.model): the engine and converters rely on them.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1


@runtime_checkable
class Tokenizer(Protocol):
    """What the generation engine and the model need from a tokenizer.

    ``pad_id`` may be negative (LLaMA's is -1): it marks padding in id buffers and is never used to
    index an embedding table.
    """

    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` file, e.g. LLaMA's ``tokenizer.model`` (32000 pieces).

    >>> tok = SentencePieceTokenizer("llama/tokenizer.model")   # doctest: +SKIP
    >>> tok.encode("Hello")                                       # doctest: +SKIP
    [1, 15043]
    """

    def __init__(self, path: str | os.PathLike[str]):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerNotFoundError(
                f"tokenizer file {str(self.path)!r} does not exist (expected a SentencePiece .model, "
                "e.g. LLaMA's tokenizer.model)"
            )
        proc = spm.SentencePieceProcessor()
        try:
            proc.Load(str(self.path))
        except (OSError, RuntimeError) as exc:  # sentencepiece raises OSError/RuntimeError on bad protobufs
            raise TokenizerError(
                f"tokenizer file {str(self.path)!r} is not a valid SentencePiece model: {exc}"
            ) from exc
        self._sp = proc
        self.vocab_size: int = int(proc.GetPieceSize())
        self.bos_id: int = int(proc.bos_id())
        self.eos_id: int = int(proc.eos_id())
        self.pad_id: int = int(proc.pad_id())
        self.unk_id: int = int(proc.unk_id())
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(
                f"tokenizer file {str(self.path)!r} defines no BOS/EOS pieces (bos={self.bos_id}, "
                f"eos={self.eos_id}); LLaMA-family models need both"
            )

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Text → ids, with BOS first (default) and EOS last (optional), like LLaMA's ``Tokenizer``."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = self._sp.EncodeAsIds(text)
        if bos:
            ids = [self.bos_id, *ids]
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text. Control ids (BOS/EOS) decode to nothing; byte pieces are re-assembled to UTF-8
        (an incomplete multi-byte tail decodes to U+FFFD, which the streaming decoder holds back)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(
                f"cannot decode ids {bad[:5]}: outside the vocabulary [0, {self.vocab_size}) of "
                f"{str(self.path)!r}"
            )
        return self._sp.DecodeIds(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(int(token_id))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _trainer_options(vocab_size: int, model_type: str) -> dict[str, object]:
    # LLaMA's normaliser/trainer settings where they matter for round-tripping text exactly:
    # identity normalisation and kept whitespace make decode(encode(s)) == s, which the stop-string
    # logic and the streaming decoder rely on.
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "byte_fallback": True,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_id": PAD_ID,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": True,
        "split_digits": True,
        "allow_whitespace_only_pieces": True,
        "character_coverage": 1.0,
        "hard_vocab_limit": True,
        "num_threads": 1,
        "minloglevel": 2,
    }


def train_sentencepiece(
    texts: Iterable[str],
    out_path: str | os.PathLike[str],
    vocab_size: int,
    *,
    model_type: str = "bpe",
    by_line: bool = True,
    options: dict[str, object] | None = None,
) -> SentencePieceTokenizer:
    """Train a LLaMA-style SentencePiece model (byte fallback, unk 0, BOS 1, EOS 2, pad -1).

    ``texts`` are documents; by default they are split into lines for training (newlines are then
    encoded with the ``<0x0A>`` byte piece, as in LLaMA); ``by_line=False`` trains on whole documents,
    so pieces may contain newlines. ``options`` override trainer settings (e.g.
    ``split_by_whitespace=False`` for multi-word pieces). Writes ``out_path`` and returns it loaded.
    ``vocab_size`` must exceed the 259 reserved pieces (3 specials + 256 bytes) and be reachable by the
    corpus, else ``ConfigError``.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ConfigError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size <= 3 + 256:
        raise ConfigError(f"vocab_size {vocab_size} too small: byte fallback alone needs 259 pieces")
    if by_line:
        lines = [line for text in texts for line in text.splitlines() if line.strip()]
    else:
        lines = [text for text in texts if text.strip()]
    if not lines:
        raise ConfigError("train_sentencepiece needs at least one non-empty line of text")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            **{**_trainer_options(vocab_size, model_type), **(options or {})},
        )
    except RuntimeError as exc:  # e.g. "Vocabulary size is too high" for a small corpus
        raise ConfigError(f"cannot train a {vocab_size}-piece SentencePiece model: {exc}") from exc
    # Write to a temporary name and rename, so concurrent trainers (parallel tests) never see a
    # half-written model file.
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=".model.part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, out_path)
    return SentencePieceTokenizer(out_path)


# A small English corpus: instruction-following prose, the GPT4Tools ReAct vocabulary, file names,
# numbers and a few non-ASCII words (so the byte-fallback path is exercised by ordinary prompts).
TINY_CORPUS: tuple[str, ...] = (
    """Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction:
Describe the image in detail.
### Input:
A photo of a dog running on the beach.
### Response:
The image shows a brown dog running along a sandy beach. The sea is calm and the sky is blue.
There are a few clouds, and the dog looks happy. In the background, people are walking near the water.""",
    """GPT4Tools can handle various text and visual tasks, such as answering questions and providing
in-depth explanations and discussions. It generates human-like text and uses tools to indirectly
understand images. When referring to images, GPT4Tools follows strict file name rules.
To complete visual tasks, GPT4Tools uses tools and stays loyal to observation outputs.
Users can provide new images to GPT4Tools with a description, and the description helps GPT4Tools
to understand this image, but GPT4Tools should use tools to finish the following tasks.""",
    """TOOLS:
------
GPT4Tools has access to the following tools:
> Get Photo Description: useful when you want to know what is inside the photo.
> Answer Question About The Image: useful when you need an answer for a question based on an image.
> Detect the Give Object: useful when you only want to detect or find out given objects in the picture.
> Remove Something From The Photo: useful when you want to remove an object from the photo.
> Replace Something From The Photo: useful when you want to replace an object with another object.
> Generate Image Condition On Text: useful when you want to generate an image from a text description.
> Segment the Image: useful when you want to segment all the parts of the image.
> Edge Detection On Image: useful when you want to detect the edges of the image.
To use a tool, please use the following format:
Thought: Do I need to use a tool? Yes
Action: the action to take, should be one of the tools
Action Input: the input to the action
Observation: the result of the action
When you have a response to say to the Human, or if you do not need to use a tool, you MUST use the format:
Thought: Do I need to use a tool? No
AI: [your response here]""",
    """Human: Provide an image named image/ab12cd34.png. Description: a cat sitting on a sofa.
Understand the image using tools.
AI: Received.
Human: What is the cat doing?
Thought: Do I need to use a tool? Yes
Action: Answer Question About The Image
Action Input: image/ab12cd34.png, what is the cat doing
Observation: the cat is sleeping
Thought: Do I need to use a tool? No
AI: The cat is sleeping on the sofa.
Human: Remove the cat from the photo.
Thought: Do I need to use a tool? Yes
Action: Remove Something From The Photo
Action Input: image/ab12cd34.png, cat
Observation: image/5e6f7a8b.png
Thought: Do I need to use a tool? No
AI: Result saved as image/5e6f7a8b.png""",
    """The audio clip contains birds singing in a forest, and a car passes in the distance.
The video shows a person riding a bicycle through a city street at night, with lights everywhere.
The point cloud represents an airplane with two wings, a long body and a tail.
Listen to the sound and tell me which animal makes it. It sounds like a dog barking twice.
Answer the question in one sentence. Explain your reasoning step by step. Let's think step by step.
What color is the car? The car is red. How many people are in the picture? There are 3 people.
In 2023, the model was trained for 4 epochs on 8 GPUs with a batch size of 16 and 512 tokens.
Write a short poem about the ocean: waves roll in, the moon is bright, the night is quiet.
A café in Zürich serves crème brûlée; naïve résumé, 東京, 你好 and emoji 🙂 appear in text too.""",
)


def _tiny_cache_dir() -> Path:
    root = os.environ.get("IBLLM_TOKENIZER_CACHE")
    return Path(root) if root else Path(tempfile.gettempdir()) / "ibllm_agent_tokenizers"


@lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> SentencePieceTokenizer:
    """A small LLaMA-style SentencePiece tokenizer trained on ``TINY_CORPUS`` (cached on disk).

    The file lives under ``$IBLLM_TOKENIZER_CACHE`` (default: ``<tmp>/ibllm_agent_tokenizers``) named
    by a hash of corpus + settings, so repeated calls (and processes) reuse it. Same special ids as
    LLaMA: unk 0, BOS 1, EOS 2, pad -1.
    """
    digest = hashlib.sha256(
        repr((TINY_CORPUS, sorted(_trainer_options(vocab_size, "bpe").items()))).encode()
    ).hexdigest()[:16]
    path = _tiny_cache_dir() / f"tiny-{vocab_size}-{digest}.model"
    if path.is_file():
        try:
            return SentencePieceTokenizer(path)
        except TokenizerError:
            pass  # a damaged cache file is simply retrained below
    return train_sentencepiece(TINY_CORPUS, path, vocab_size)
