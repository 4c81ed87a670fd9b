"""CLIP BPE tokeniser: cleaning, special tokens, truncation, agreement with open_clip's."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent import media
from ibllm_agent.media.text import EOT_TOKEN, SOT_TOKEN, get_tokenizer, tokenize


def test_known_ids():
    assert [i for i in tokenize("A dog.").tolist() if i] == [49406, 320, 1929, 269, 49407]


def test_cleaning_html_whitespace_case():
    tok = get_tokenizer()
    assert tok.clean("  Tom &amp;amp; JERRY\n\t  ran ") == "tom & jerry ran"
    assert torch.equal(tokenize("Tom &amp;amp; Jerry"), tokenize("tom   &   jerry"))


def test_truncation_without_forced_eot():
    long = " ".join(["word"] * 200)
    ids = tokenize(long)
    assert ids.shape == (77,) and ids[0] == SOT_TOKEN and EOT_TOKEN not in ids.tolist()
    forced = get_tokenizer()(long, force_eot=True)
    assert forced[-1] == EOT_TOKEN and torch.equal(forced[:-1], ids[:-1])


def test_empty_text_is_sot_eot():
    assert tokenize("").tolist()[:3] == [SOT_TOKEN, EOT_TOKEN, 0]


@pytest.mark.parametrize("text", ["Hello, World! 123", "naïve café — 😀 don't stop", "a\u00a0b\u200bc"])
def test_matches_open_clip(text):
    open_clip = pytest.importorskip("open_clip")
    assert tokenize(text).tolist() == open_clip.tokenize([text])[0].tolist()


def test_literal_special_token_maps_to_its_id():
    assert tokenize("<|endoftext|> x").tolist()[:4] == [SOT_TOKEN, EOT_TOKEN, 343, EOT_TOKEN]


def test_text_sources(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_text("A dog.", encoding="utf-8")
    assert media.infer_modality(path) == "text"
    assert torch.equal(media.load(path), tokenize("A dog."))
    assert torch.equal(media.load(b"A dog.", "text"), tokenize("A dog."))
    ids = tokenize("A dog.")
    assert media.load(ids, "text") is ids
    with pytest.raises(media.UnreadableMediaError, match="UTF-8"):
        media.load(b"\xff\xfe\xfa", "text")
