"""The SentencePiece wrapper and the tiny tokenizer trained on the fly."""

from __future__ import annotations

import os

import pytest

from ibllm_agent.errors import ConfigError, IbllmError, TokenizerError, TokenizerNotFoundError
from ibllm_agent.model.tokenizer import (
    TINY_CORPUS,
    SentencePieceTokenizer,
    Tokenizer,
    tiny_tokenizer,
    train_sentencepiece,
)

TEXTS = [
    (
        "Thought: Do I need to use a tool? Yes\nAction: Remove Something From The Photo\n"
        "Action Input: image/ab12cd34.png, cat\nObservation: image/5e6f7a8b.png"
    ),
    "  two  spaces,\ttabs and trailing space ",
    "Zürich crème brûlée 東京 🙂 ✓ ∑",  # ✓ and ∑ are not in the corpus: byte fallback
    "12345 + 678 = 13023",
]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def test_tiny_tokenizer_has_llama_special_ids(tok):
    assert isinstance(tok, Tokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert tok.vocab_size == len(tok) == 512
    assert tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.eos_id not in ids
    assert tok.decode(ids) == text


def test_bos_eos_flags(tok):
    body = tok.encode("Describe the image.", bos=False)
    assert tok.encode("Describe the image.") == [tok.bos_id, *body]
    assert tok.encode("Describe the image.", bos=False, eos=True) == [*body, tok.eos_id]
    assert tok.encode("", bos=True) == [tok.bos_id]


def test_byte_fallback_and_agent_words(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("✓", bos=False)]
    # ✓ is U+2713 = E2 9C 93 in UTF-8; not in the corpus, so three byte pieces.
    assert pieces[-3:] == ["<0xE2>", "<0x9C>", "<0x93>"]
    assert tok.encode("\n", bos=False)[-1] == tok._sp.PieceToId("<0x0A>")
    # GPT4Tools vocabulary is learned as whole pieces.
    for word in ("▁Thought", "▁Action", "▁image", "▁tool"):
        assert tok._sp.PieceToId(word) != tok.unk_id, word


def test_tiny_tokenizer_is_cached_on_disk(tok):
    mtime = os.path.getmtime(tok.path)
    tiny_tokenizer.cache_clear()
    again = tiny_tokenizer()
    assert again is not tok and again.path == tok.path
    assert os.path.getmtime(again.path) == mtime  # loaded, not retrained
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_tiny_tokenizer_retrains_a_damaged_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("IBLLM_TOKENIZER_CACHE", str(tmp_path))
    tiny_tokenizer.cache_clear()
    try:
        first = tiny_tokenizer()
        assert first.path.parent == tmp_path
        first.path.write_bytes(b"garbage")
        tiny_tokenizer.cache_clear()
        fixed = tiny_tokenizer()
        assert fixed.decode(fixed.encode(TEXTS[0])) == TEXTS[0]
    finally:
        tiny_tokenizer.cache_clear()


def test_train_sentencepiece_custom(tmp_path):
    out = tmp_path / "sub" / "tok.model"
    tok = train_sentencepiece(TINY_CORPUS, out, vocab_size=400)
    assert out.is_file() and tok.vocab_size == 400
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
    assert tok.decode(tok.encode(TEXTS[2])) == TEXTS[2]
    assert not list((tmp_path / "sub").glob("*.part"))  # atomic write left nothing behind


def test_missing_file_is_typed(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer(tmp_path / "nope.model")


def test_corrupt_file_is_typed(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\x01 not a protobuf at all" * 10)
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model") as info:
        SentencePieceTokenizer(bad)
    assert isinstance(info.value, IbllmError)


def test_bad_training_input(tmp_path):
    with pytest.raises(ConfigError, match="too small"):
        train_sentencepiece(TINY_CORPUS, tmp_path / "a.model", vocab_size=200)
    with pytest.raises(ConfigError, match="non-empty"):
        train_sentencepiece(["", "  \n"], tmp_path / "b.model", vocab_size=300)
    with pytest.raises(ConfigError, match="cannot train"):
        train_sentencepiece(["tiny corpus"], tmp_path / "c.model", vocab_size=5000)
    with pytest.raises(ConfigError, match="model_type"):
        train_sentencepiece(TINY_CORPUS, tmp_path / "d.model", vocab_size=300, model_type="word2vec")


def test_bad_ids_and_inputs(tok):
    with pytest.raises(TokenizerError, match=r"\[-1, 512\]"):
        tok.decode([5, -1, 512])
    with pytest.raises(TokenizerError, match="expects a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_pickles_for_worker_processes(tok):
    import pickle

    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and clone.vocab_size == tok.vocab_size
