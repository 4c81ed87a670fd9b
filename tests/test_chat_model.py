"""ChatImageBindLLM without tools (plain chat) and the ScriptedGenerator test double."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest
from ibllm_agent.prompts import format_prompt
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.errors import ConfigError, IbllmError
from ibllm_agent.experts import FunctionExpert, format_line, run_experts
from ibllm_agent.testing import ScriptedGenerator, ScriptExhaustedError, load_scripted
from ibllm_agent.types import CacheSettings, Media, Sampling, TextGenerator


def test_public_import_paths():
    import importlib

    import ibllm_agent

    assert ibllm_agent.ChatImageBindLLM is ChatImageBindLLM
    assert ChatImageBindLLM.__module__ == "ibllm_agent.chat.model"
    assert "Key init args" in ChatImageBindLLM.__doc__  # the class docstring is the manual
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ibllm_agent.chat_model")  # moved, no shim left behind


# -- ScriptedGenerator ---------------------------------------------------------------------------------
def test_scripted_generator_is_a_text_generator_and_records_calls():
    gen = ScriptedGenerator(["one", "two"], prompt_template="alpaca", context_length=99)
    assert isinstance(gen, TextGenerator)
    media = [Media("image", b"x")]
    out = gen.generate("p1", media, sampling=Sampling(temperature=0.0), cache=CacheSettings(k=3))
    assert (out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens) == ("one", "eos", 1, 1)
    assert "".join(gen.stream("p2 q")) == "two"
    assert gen.calls[0] == ("p1", media, Sampling(temperature=0.0))
    assert gen.calls[1][0] == "p2 q" and gen.calls[1][1] == []
    assert gen.caches == [CacheSettings(k=3), None]
    assert gen.prompts == ["p1", "p2 q"] and gen.remaining == 0
    with pytest.raises(ScriptExhaustedError, match="2 output"):
        gen.generate("p3")
    assert issubclass(ScriptExhaustedError, IbllmError)


def test_load_scripted_reads_a_json_list_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "out.json"
    good.write_text('["Thought: Do I need to use a tool? No\\nAI: hi"]', encoding="utf-8")
    gen = load_scripted(f"scripted:{good}")  # the --model form; a bare path works too
    assert gen.generate("p").text.endswith("AI: hi") and load_scripted(good).remaining == 1
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "broken.json").write_text("[", encoding="utf-8")
    for spec, message in [(tmp_path / "none.json", "not found"), (tmp_path / "bad.json", "JSON list of strings"),
                          (tmp_path / "broken.json", "not valid JSON"), (tmp_path, "cannot read")]:
        with pytest.raises(ConfigError, match=message):
            load_scripted(f"scripted:{spec}")


def test_scripted_generator_honours_stop_and_length_and_streams_in_pieces():
    gen = ScriptedGenerator(["abc\nObservation: x", "w1 w2 w3 w4", "long text here"], chunk_size=2)
    out = gen.generate("p", sampling=Sampling(stop=("zz", "\nObservation:")))
    assert (out.text, out.finish_reason) == ("abc", "stop")
    out = gen.generate("p", sampling=Sampling(max_new_tokens=2))
    assert (out.text, out.finish_reason) == ("w1 w2", "length")
    assert list(gen.stream("p")) == ["lo", "ng", " t", "ex", "t ", "he", "re"]


def test_scripted_generator_callables_repeat_and_push():
    gen = ScriptedGenerator([lambda prompt, media, sampling: prompt.upper()], repeat_last=True)
    assert gen.generate("ab").text == "AB"
    assert gen.generate("cd").text == "CD"  # repeated
    gen.push("x")
    assert gen.generate("ef").text == "x"
    with pytest.raises(ValueError):
        ScriptedGenerator([], chunk_size=0)


# -- construction --------------------------------------------------------------------------------------
def test_construction_errors():
    with pytest.raises(ConfigError, match="needs model"):
        ChatImageBindLLM()
    with pytest.raises(ConfigError, match="not both"):
        ChatImageBindLLM(preset="tiny", model_dir="/x")
    with pytest.raises(ConfigError, match="TextGenerator"):
        ChatImageBindLLM(model=object())
    with pytest.raises(ConfigError, match="max_new_tokens"):
        ChatImageBindLLM(model=ScriptedGenerator([]), max_new_tokens=0)


def test_metadata_and_aliases():
    chat = ChatImageBindLLM(model=ScriptedGenerator([]), max_tokens=33, temperature=0.0)
    assert chat.max_new_tokens == 33
    assert chat._llm_type == "imagebind-llm"
    params = chat._identifying_params
    assert params["model_name"] == "ScriptedGenerator" and params["protocol"] == "training"
    ls = chat._get_ls_params(stop=["x"])
    assert ls["ls_max_tokens"] == 33 and ls["ls_temperature"] == 0.0 and ls["ls_stop"] == ["x"]


# -- plain chat ----------------------------------------------------------------------------------------
def test_single_turn_uses_the_model_template_exactly():
    gen = ScriptedGenerator([" The sea is blue. \n"], prompt_template="alpaca")
    chat = ChatImageBindLLM(model=gen, temperature=0.0, max_new_tokens=40, seed=7)
    msg = chat.invoke("Describe the sea.")
    assert msg.content == "The sea is blue."
    prompt, media, sampling = gen.calls[0]
    assert prompt == format_prompt("Describe the sea.", template="alpaca")
    assert media == []
    assert sampling == Sampling(max_new_tokens=40, temperature=0.0, top_p=0.75, stop=(), seed=7)
    assert msg.usage_metadata == {"input_tokens": len(prompt.split()), "output_tokens": 4, "total_tokens": len(prompt.split()) + 4}
    assert msg.response_metadata["raw_text"] == " The sea is blue. \n"
    assert msg.tool_calls == [] and msg.invalid_tool_calls == []


def test_multi_turn_and_system_prompt():
    gen = ScriptedGenerator(["fine\nHuman: and you?"], prompt_template="alpaca")
    chat = ChatImageBindLLM(model=gen)
    msg = chat.invoke(
        [SystemMessage("Be brief."), HumanMessage("hi"), AIMessage("hello"), HumanMessage("how are you?")]
    )
    assert msg.content == "fine"  # cut at the next human turn
    prompt, _, sampling = gen.calls[0]
    assert prompt == format_prompt("Be brief.\n\nhow are you?", "Previous conversation:\nHuman: hi\nAI: hello", "alpaca")
    assert sampling.stop == ("\nHuman:",)


def test_caller_and_field_stop_strings_are_applied():
    gen = ScriptedGenerator(["a END b"], prompt_template="raw")
    chat = ChatImageBindLLM(model=gen, stop=["STOP"])
    assert chat.invoke("x", stop=["END"]).content == "a"
    assert gen.calls[0][2].stop == ("STOP", "END")


def test_per_call_options_and_unknown_kwargs():
    gen = ScriptedGenerator(["ok"], repeat_last=True)
    chat = ChatImageBindLLM(model=gen, cache_k=4)
    chat.invoke("x", temperature=0.5, top_p=0.9, max_new_tokens=7, seed=1, cache={"k": 2, "alpha": 0.1})
    assert gen.calls[-1][2] == Sampling(max_new_tokens=7, temperature=0.5, top_p=0.9, stop=(), seed=1)
    assert gen.caches[-1] == CacheSettings(enabled=True, k=2, t=20.0, alpha=0.1)
    chat.invoke("x")
    assert gen.caches[-1] == CacheSettings(enabled=True, k=4, t=20.0, alpha=0.5)
    chat.invoke("x", cache={"enabled": False})
    assert gen.caches[-1].enabled is False
    with pytest.raises(ConfigError, match="frobnicate"):
        chat.invoke("x", frobnicate=1)
    with pytest.raises(ConfigError, match="unknown cache setting"):
        chat.invoke("x", cache={"size": 3})
    with pytest.raises(ConfigError, match="model"):
        chat.invoke("x", model="other")  # one loaded model per instance


def test_max_new_tokens_is_clamped_to_the_context():
    gen = ScriptedGenerator(["ok"], prompt_template="raw", context_length=10)
    ChatImageBindLLM(model=gen, max_new_tokens=500).invoke("one two three")
    assert gen.calls[0][2].max_new_tokens == 7


def test_plain_stream_trims_like_invoke():
    text = "  \n Hello there,\nfriend.  \n"
    gen = ScriptedGenerator([text, text], prompt_template="raw", chunk_size=2)
    chat = ChatImageBindLLM(model=gen)
    chunks = list(chat.stream("hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 3  # really streamed in pieces
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == chat.invoke("hi").content == "Hello there,\nfriend."
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] == 3
    assert full.response_metadata["raw_text"] == text


def test_experts_add_context_lines():
    seen = []

    def transcribe(m):
        seen.append(m.modality)
        return "turn left\n at the corner"

    def broken(m):
        raise RuntimeError("boom")

    experts = [
        FunctionExpert("recognized text", ("audio",), transcribe),
        FunctionExpert("detected object classes", ("image",), lambda m: "dog, ball"),
        FunctionExpert("nothing", ("audio",), lambda m: None),
        FunctionExpert("broken", ("audio",), broken),
    ]
    gen = ScriptedGenerator(["ok"], prompt_template="raw")
    chat = ChatImageBindLLM(model=gen, experts=experts)
    chat.invoke([HumanMessage(content=[
        {"type": "text", "text": "what is said?"},
        {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"},
    ])])
    # before the instruction, as in the paper's Fig. 9
    assert gen.calls[0][0] == "(recognized text: turn left at the corner)\nwhat is said?"
    assert seen == ["audio"]
    assert format_line("a", " b \n c ") == "(a: b c)"
    assert run_experts(experts, [Media("image", b"")]) == ["(detected object classes: dog, ball)"]


def test_async_invoke_and_stream_do_not_block_the_loop():
    def slow(prompt, media, sampling):
        time.sleep(0.3)  # a blocking model
        return "Thought: Do I need to use a tool? No\nAI: done"

    gen = ScriptedGenerator([slow, slow], prompt_template="raw")
    chat = ChatImageBindLLM(model=gen)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        msg = await chat.ainvoke("hi")
        during_invoke = ticks
        chunks = [c async for c in chat.astream("hi")]
        task.cancel()
        return msg, during_invoke, ticks, chunks

    msg, during_invoke, ticks, chunks = asyncio.run(main())
    assert msg.content.endswith("AI: done")  # no tools bound: plain text
    assert during_invoke >= 5 and ticks >= 10  # the loop kept running while the model worked
    assert chunks[-1].chunk_position == "last"
    assert "".join(c.content for c in chunks) == msg.content


def test_astream_propagates_model_errors():
    chat = ChatImageBindLLM(model=ScriptedGenerator([]))

    async def main():
        return [c async for c in chat.astream("hi")]

    with pytest.raises(ScriptExhaustedError):
        asyncio.run(main())


class _EndlessStream(ScriptedGenerator):
    """A model that decodes forever unless its stream is closed; counts pieces, records the context."""

    def __init__(self, var):
        super().__init__([], prompt_template="raw")
        self.var, self.pieces, self.seen = var, 0, []
        self.closed = threading.Event()

    def stream(self, prompt, media=None, *, sampling=None, cache=None):
        self.seen.append(self.var.get())
        try:
            while True:
                self.pieces += 1
                yield f"w{self.pieces} "
        finally:
            self.closed.set()


def test_astream_consumer_that_stops_stops_decoding_and_keeps_contextvars():
    var = contextvars.ContextVar("request", default="none")
    gen = _EndlessStream(var)
    chat = ChatImageBindLLM(model=gen)

    async def main():
        var.set("req-7")
        async for chunk in chat.astream("hi"):
            assert chunk.content.startswith("w1")
            break
        assert await asyncio.to_thread(gen.closed.wait, 5)  # the model's stream was closed
        pieces = gen.pieces
        await asyncio.sleep(0.05)
        return pieces

    pieces = asyncio.run(main())
    assert gen.pieces == pieces < 100  # decoding stopped (the bridge runs at most 16 chunks ahead)
    assert gen.seen == ["req-7"]


def test_batch():
    gen = ScriptedGenerator(["a", "b"], prompt_template="raw")
    out = ChatImageBindLLM(model=gen).batch(["x", "y"], config={"max_concurrency": 1})
    assert [m.content for m in out] == ["a", "b"]


def test_bad_field_values_are_config_errors():
    with pytest.raises(ConfigError, match="protocol"):
        ChatImageBindLLM(model=ScriptedGenerator([]), protocol="nonsense")


def test_concurrent_batch_calls_are_serialised_per_model():
    import threading

    active = 0
    peak = 0
    guard = threading.Lock()

    def tracked(prompt, media, sampling):
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with guard:
            active -= 1
        return prompt

    gen = ScriptedGenerator([tracked] * 6, prompt_template="raw")
    out = ChatImageBindLLM(model=gen).batch([str(i) for i in range(6)], config={"max_concurrency": 6})
    assert [m.content for m in out] == [str(i) for i in range(6)]
    assert peak == 1
