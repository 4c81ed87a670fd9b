"""Stop strings: one implementation shared by the detokenizer, the chat stream, the protocol and
the scripted generator."""

from __future__ import annotations

import pytest

from ibllm_agent import protocol as P
from ibllm_agent.stops import StopCutter, cut_at_stop, find_stop, partial_stop_len
from ibllm_agent.testing import ScriptedGenerator
from ibllm_agent.types import Sampling


def test_find_and_cut_at_the_earliest_stop():
    assert find_stop("ab STOP cd END", ["END", "STOP"]) == 3
    assert find_stop("ab STOP cd", ["STOP"], start=4) == -1
    assert find_stop("abc", ["", "x"]) == -1  # empty stop strings never match
    assert cut_at_stop("ab STOP cd END", ["END", "STOP"]) == ("ab ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_partial_stop_len_is_the_longest_suffix_that_starts_a_stop():
    assert partial_stop_len("hello\nObs", ["\nObservation:"]) == 4
    assert partial_stop_len("hello", ["\nObservation:"]) == 0
    assert partial_stop_len("xxab", ["abc", "b"]) == 2  # a whole stop ("b") is not a *proper* prefix
    assert partial_stop_len("xa", ["ab"]) == 1 and partial_stop_len("ab", ["ab"]) == 0  # a hit, not a hold


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_stop_cutter_gives_the_same_text_whatever_the_piece_size(size):
    text = "Thought: yes\nAction: x\nAction Input: y\nObservation: never shown"
    cutter = StopCutter(P.STOP_SEQUENCES)
    out = "".join(cutter.feed(text[i : i + size]) for i in range(0, len(text), size)) + cutter.flush()
    assert out == P.cut_at_stop(text)[0] == "Thought: yes\nAction: x\nAction Input: y"
    assert cutter.stopped
    assert cutter.feed("more") == ""


def test_stop_cutter_holds_a_possible_start_and_releases_it_at_the_end():
    cutter = StopCutter(["\nHuman:"])
    assert cutter.feed("Hi\nHu") == "Hi"  # "\nHu" may become "\nHuman:"
    assert cutter.feed("go") == "\nHugo"  # it did not
    assert cutter.feed(" bye\n") == " bye"
    assert cutter.flush() == "\n"
    assert not cutter.stopped


def test_scripted_generator_cuts_like_the_chat_stream():
    gen = ScriptedGenerator(["one\nHuman: two"])
    out = gen.generate("p", [], sampling=Sampling(stop=("\nHuman:",)))
    assert (out.text, out.finish_reason) == ("one", "stop")


def test_detokenizer_uses_the_shared_rules(monkeypatch):
    """The decoder's detokenizer finds and holds back stop strings through ``ibllm_agent.stops``."""
    from ibllm_agent.model import detokenizer as D

    calls = []
    real = D.partial_stop_len
    monkeypatch.setattr(D, "partial_stop_len", lambda text, stops: calls.append(text) or real(text, stops))

    class CharTokenizer:  # id = code point; decode joins characters
        def decode(self, ids):
            return "".join(map(chr, ids))

    d = D.Detokenizer(CharTokenizer(), stop=["END"])
    shown = "".join(d.push(ord(c)) for c in "abEN")
    assert shown == "ab" and calls  # "EN" is held back
    shown += "".join(d.push(ord(c)) for c in "D tail")
    assert shown == "ab" and d.stopped and d.text == "abEN"[:2]
