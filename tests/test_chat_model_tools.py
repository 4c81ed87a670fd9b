"""ChatImageBindLLM with tools bound: GPT4Tools prompt, parsing into tool calls, replay, streaming."""

from __future__ import annotations

import json
import re

import pytest
from ibllm_agent.prompts import format_prompt
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from ibllm_agent import protocol as P
from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.errors import ConfigError
from ibllm_agent.experts import FunctionExpert
from ibllm_agent.testing import ScriptedGenerator

YES = "Thought: Do I need to use a tool? Yes"
NO = "Thought: Do I need to use a tool? No"
# Worded like GPT4Tools' own descriptions (which state their inputs, so the tool lines are verbatim).
CAPTION_DESC = (
    "useful when you want to know what is inside the photo. receives image_path as input. The input to "
    "this tool should be a string, representing the image_path."
)
VQA_DESC = (
    "useful when you need an answer for a question based on an image. The input to this tool should be "
    "a comma separated string of two, representing the image_path and the question"
)


@tool("Get Photo Description", description=CAPTION_DESC)
def caption(image_path: str) -> str:
    return f"a cat on a sofa ({image_path})"


@tool("Answer Question About The Image", description=VQA_DESC)
def vqa(image_path: str, question: str) -> str:
    return "red"


@tool
def count_things(image_path: str, n: int) -> str:
    """Count at most n things in an image."""
    return "3"


TOOLS = [caption, vqa]


def chat_for(*outputs, **kw):
    gen = ScriptedGenerator(list(outputs), prompt_template=kw.pop("template", "raw"))
    return gen, ChatImageBindLLM(model=gen, **kw)


def expected_prompt(user, history="", scratchpad="", tools=(("Get Photo Description", CAPTION_DESC), ("Answer Question About The Image", VQA_DESC))):
    specs = [P.ToolSpec(n, d) for n, d in tools]
    return P.render_prompt(specs, user, chat_history=history, scratchpad=scratchpad)


# -- prompt --------------------------------------------------------------------------------------------
def test_prompt_is_the_gpt4tools_training_prompt():
    gen, chat = chat_for(f"{NO}\nAI: hi")
    chat.bind_tools(TOOLS).invoke("describe image/ab12cd34.png")
    prompt, media, sampling = gen.calls[0]
    # caption first: "describe" is not in either tool, so ties keep the bound order
    assert prompt == expected_prompt("describe image/ab12cd34.png")
    assert prompt.startswith("GPT4Tools can handle various text and visual tasks")
    assert prompt.endswith("Let's think step by step.\n")
    assert sampling.stop == ("\nObservation:", "\n\tObservation:")
    assert media == []


def test_model_template_wraps_the_protocol_text():
    gen, chat = chat_for(f"{NO}\nAI: hi", template="alpaca")
    chat.bind_tools(TOOLS).invoke("describe image/ab12cd34.png")
    assert gen.calls[0][0] == format_prompt(expected_prompt("describe image/ab12cd34.png"), template="alpaca")


def test_relevant_tools_first_and_max_tools():
    gen, chat = chat_for(f"{NO}\nAI: x", max_tools=1)
    msg = chat.bind_tools(TOOLS).invoke("answer a question about the image: what color?")
    assert msg.response_metadata["tools_shown"] == ["Answer Question About The Image"]
    assert "> Get Photo Description" not in gen.calls[0][0]
    assert "should be one of [Answer Question About The Image]" in gen.calls[0][0]


def test_system_message_goes_before_the_prefix():
    gen, chat = chat_for(f"{NO}\nAI: x")
    chat.bind_tools(TOOLS).invoke([SystemMessage("You are careful."), HumanMessage("hi")])
    assert gen.calls[0][0] == "You are careful.\n\n" + expected_prompt("hi")
    gen, chat = chat_for(f"{NO}\nAI: x", system_messages="ignore")
    chat.bind_tools(TOOLS).invoke([SystemMessage("You are careful."), HumanMessage("hi")])
    assert gen.calls[0][0] == expected_prompt("hi")


def test_attached_image_is_announced_and_passed_on():
    gen, chat = chat_for(f"{NO}\nAI: x")
    b64 = "iVBORw0KGgo="
    chat.bind_tools(TOOLS).invoke(
        [HumanMessage(content=[
            {"type": "text", "text": "what is in it?"},
            {"type": "image", "base64": b64, "mime_type": "image/png", "extras": {"name": "image/ab12cd34.png", "description": "A cat."}},
        ])]
    )
    prompt, media, _ = gen.calls[0]
    history = "Human: Provide an image named image/ab12cd34.png. Description: A cat. Understand the image using tools.\nAI: Received."
    assert prompt == expected_prompt("what is in it?", history=history)
    assert [(m.modality, m.name) for m in media] == [("image", "image/ab12cd34.png")]


def test_unnamed_media_get_stable_names_or_the_namer_and_captioner():
    gen, chat = chat_for(f"{NO}\nAI: x", f"{NO}\nAI: x")
    msg = [HumanMessage(content=[{"type": "text", "text": "q"}, {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"}])]
    chat.bind_tools(TOOLS).invoke(msg)
    chat.bind_tools(TOOLS).invoke(msg)
    name = gen.calls[0][1][0].name
    assert re.fullmatch(r"audio/[0-9a-f]{8}\.wav", name) and gen.calls[1][1][0].name == name
    assert f"Provide an audio clip named {name}. Description: An attached audio clip. Understand the audio clip" in gen.calls[0][0]

    gen, chat = chat_for(f"{NO}\nAI: x", media_namer=lambda m: "audio/zzzzzzzz.wav",
                         captioner=FunctionExpert("caption", ("audio",), lambda m: "A dog barks."))
    chat.bind_tools(TOOLS).invoke(msg)
    assert "Provide an audio clip named audio/zzzzzzzz.wav. Description: A dog barks. Understand" in gen.calls[0][0]


def test_expert_lines_join_the_new_input():
    gen, chat = chat_for(f"{NO}\nAI: x", f"{NO}\nAI: y", experts=[FunctionExpert("recognized text", ("audio",), lambda m: "hello world")])
    chat.bind_tools(TOOLS).invoke([HumanMessage(content=[{"type": "text", "text": "what is said?"}, {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"}])])
    assert "\nNew input: (recognized text: hello world)\nwhat is said?\nGPT4Tools needs" in gen.calls[0][0]
    # switched off for one call
    chat.bind_tools(TOOLS).invoke([HumanMessage(content=[{"type": "text", "text": "again?"}, {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"}])], experts=False)
    assert "\nNew input: again?\nGPT4Tools needs" in gen.calls[1][0] and "recognized text" not in gen.calls[1][0]


def test_experts_and_captioner_run_once_per_attachment_not_per_step(tmp_path):
    # An agent turn calls the model once per step and each call re-reads the attachments; a speech
    # recogniser or caption model must not run again for the same content.
    runs = []

    def transcribe(m):
        runs.append(("asr", m.modality))
        return "hello world"

    def caption(m):
        runs.append(("caption", m.modality))
        return "A dog barks."

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF\x00\x00")
    gen, chat = chat_for(
        f"{YES}\nAction: Get Photo Description\nAction Input: x.png", f"{NO}\nAI: x", f"{NO}\nAI: y",
        experts=[FunctionExpert("recognized text", ("audio",), transcribe)],
        captioner=FunctionExpert("caption", ("audio",), caption),
    )
    human = HumanMessage(content=[{"type": "text", "text": "what is said?"},
                                  {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"}])
    bound = chat.bind_tools(TOOLS)
    step = bound.invoke([human])
    tool_msg = ToolMessage("a cat", tool_call_id=step.tool_calls[0]["id"])
    bound.invoke([human, step, tool_msg])
    assert sorted(runs) == [("asr", "audio"), ("caption", "audio")]
    for prompt, _, _ in gen.calls:  # both steps still carry the finding and the caption
        assert "(recognized text: hello world)" in prompt and "Description: A dog barks." in prompt
    # A file attachment is remembered by its content hash: a changed file is looked at again, a copy
    # under another name is not.
    from ibllm_agent.types import Media

    runs.clear()
    assert chat._finding(chat.captioner, Media("audio", str(wav))) == "A dog barks."
    assert chat._finding(chat.captioner, Media("audio", wav)) == "A dog barks."
    assert len(runs) == 1
    wav.write_bytes(b"RIFF\x00\x00\x00\x00")
    chat._finding(chat.captioner, Media("audio", str(wav)))
    assert len(runs) == 2
    copy = tmp_path / "copy.wav"
    copy.write_bytes(wav.read_bytes())
    chat._finding(chat.captioner, Media("audio", copy))
    assert len(runs) == 2


# -- parsing into tool calls ---------------------------------------------------------------------------
def test_action_becomes_a_tool_call_with_comma_semantics_and_fuzzy_name():
    _, chat = chat_for(f"{YES}\nAction: answer question about the image\nAction Input: image/a.png, what color, exactly?")
    msg = chat.bind_tools(TOOLS).invoke("what color is image/a.png?")
    assert msg.content == ""
    [tc] = msg.tool_calls
    assert tc["name"] == "Answer Question About The Image"
    assert tc["args"] == {"image_path": "image/a.png", "question": "what color, exactly?"}
    assert re.fullmatch(r"call_[0-9a-f]{32}", tc["id"])
    assert msg.additional_kwargs["reasoning_content"] == "Do I need to use a tool? Yes"
    assert msg.response_metadata["raw_text"] == (
        f"{YES}\nAction: answer question about the image\nAction Input: image/a.png, what color, exactly?"
    )


def test_tool_call_ids_are_unique():
    out = f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png"
    _, chat = chat_for(*[out] * 5)
    ids = {chat.bind_tools(TOOLS).invoke("x").tool_calls[0]["id"] for _ in range(5)}
    assert len(ids) == 5


def test_final_answer():
    _, chat = chat_for(f"{NO}\nAI: The image shows a cat.")
    msg = chat.bind_tools(TOOLS).invoke("hi")
    assert msg.content == "The image shows a cat." and msg.tool_calls == [] and msg.invalid_tool_calls == []


@pytest.mark.parametrize(
    "output, kind, detail",
    [
        (f"{YES}\nAction: Get Photo Description\n", "invalid", "Action Input"),  # missing Action Input
        (f"{YES}\nAction: Delete Everything\nAction Input: image/a.png", "invalid", "unknown tool 'Delete Everything'"),
        (f"{YES}\nAction: count_things\nAction Input: image/a.png, three, four", "invalid", "expects integer"),
        (f"{YES}\nAction: Answer Question About The Image\nAction Input: image/a.png", "invalid", "expects 2"),
        (f"{YES}", "invalid", "named no 'Action:'"),  # "Yes" only
        ("Yes", "text", "Yes"),
        ("", "text", ""),
        ("I think it is a cat.", "text", "I think it is a cat."),
        (f"{NO}", "text", ""),
    ],
)
def test_malformed_outputs_never_raise(output, kind, detail):
    _, chat = chat_for(output)
    msg = chat.bind_tools([*TOOLS, count_things]).invoke("x")
    assert msg.tool_calls == []
    if kind == "invalid":
        [bad] = msg.invalid_tool_calls
        assert detail in bad["error"]
        assert bad["id"].startswith("call_")
        assert bad["args"]  # never empty: see _invalid_args
        assert msg.content == ""
    else:
        assert msg.invalid_tool_calls == []
        assert msg.content == detail


def test_extra_commas_join_the_last_field():
    _, chat = chat_for(f"{YES}\nAction: count_things\nAction Input: image/a.png, 3")
    msg = chat.bind_tools([count_things]).invoke("x")
    assert msg.tool_calls[0]["args"] == {"image_path": "image/a.png", "n": 3}


def test_hallucinated_observation_is_cut():
    _, chat = chat_for(
        f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png\nObservation: a dog\n{NO}\nAI: a dog"
    )
    msg = chat.bind_tools(TOOLS).invoke("x")
    assert msg.tool_calls[0]["name"] == "Get Photo Description"
    assert msg.response_metadata["raw_text"] == f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png"
    assert msg.content == ""


# -- replay ----------------------------------------------------------------------------------------------
def test_scratchpad_replays_raw_text_byte_exact_and_tool_text_only():
    raw = f"{YES}\nAction:  get photo description \nAction Input: image/a.png  "
    gen, chat = chat_for(raw, f"{NO}\nAI: A cat.")
    bound = chat.bind_tools(TOOLS)
    first = bound.invoke("describe image/a.png")
    assert first.tool_calls[0]["args"] == {"image_path": "image/a.png"}
    result = ToolMessage(
        content=[{"type": "text", "text": "a cat on a sofa"}, {"type": "image", "base64": "AAAA", "mime_type": "image/png"}],
        tool_call_id=first.tool_calls[0]["id"],
    )
    final = bound.invoke([HumanMessage("describe image/a.png"), first, result])
    assert final.content == "A cat."
    assert gen.calls[1][0] == expected_prompt(
        "describe image/a.png", scratchpad=raw + "\nObservation: a cat on a sofa\n"
    )


def test_foreign_tool_calls_are_rendered_canonically():
    gen, chat = chat_for(f"{NO}\nAI: red")
    history = [
        HumanMessage("what color is image/a.png?"),
        AIMessage("", tool_calls=[{"name": "Answer Question About The Image", "args": {"question": "color?", "image_path": "image/a.png"}, "id": "c1"}]),
        ToolMessage("red", tool_call_id="c1"),
    ]
    chat.bind_tools(TOOLS).invoke(history)
    pad = f"{YES}\nAction: Answer Question About The Image\nAction Input: image/a.png, color?\nObservation: red\n"
    assert gen.calls[0][0].endswith("step by step.\n" + pad)


def test_history_policies_render_previous_turns():
    turns = [
        HumanMessage("hello"),
        AIMessage("hi there"),
        HumanMessage("describe image/a.png"),
        AIMessage("", tool_calls=[{"name": "Get Photo Description", "args": {"image_path": "image/a.png"}, "id": "c1"}]),
        ToolMessage("a cat", tool_call_id="c1"),
        AIMessage("A cat."),
        HumanMessage("and now?"),
    ]
    gen, chat = chat_for(f"{NO}\nAI: x", f"{NO}\nAI: x")
    chat.bind_tools(TOOLS).invoke(turns)
    assert expected_prompt("and now?", history="Human: describe image/a.png\nAI: A cat.") == gen.calls[0][0]
    gen, chat = chat_for(f"{NO}\nAI: x", history="full")
    chat.bind_tools(TOOLS).invoke(turns)
    assert gen.calls[0][0] == expected_prompt(
        "and now?", history="Human: hello\nAI: hi there\nHuman: describe image/a.png\nAI: A cat."
    )


def test_full_history_is_trimmed_to_the_context():
    gen = ScriptedGenerator([f"{NO}\nAI: x"], prompt_template="raw", context_length=400)
    chat = ChatImageBindLLM(model=gen, history="full", max_new_tokens=10)
    turns = []
    for i in range(40):
        turns += [HumanMessage(f"question number {i} " + "word " * 5), AIMessage(f"answer {i}")]
    chat.bind_tools(TOOLS).invoke([*turns, HumanMessage("last")])
    prompt = gen.calls[0][0]
    assert "answer 39" in prompt and "answer 0\n" not in prompt
    assert gen.count_tokens(prompt) + 10 <= 400


# -- tool_choice ---------------------------------------------------------------------------------------
def test_tool_choice_any_prefills_and_parses_prefill_plus_continuation():
    gen, chat = chat_for(" Get Photo Description\nAction Input: image/a.png")
    msg = chat.bind_tools(TOOLS, tool_choice="any").invoke("x")
    assert gen.calls[0][0].endswith("step by step.\n" + f"{YES}\nAction:")
    assert msg.tool_calls[0]["args"] == {"image_path": "image/a.png"}
    assert msg.response_metadata["raw_text"] == f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png"


@pytest.mark.parametrize("stream", [False, True])
def test_a_continuation_that_lost_its_leading_space_still_reads_after_the_prefill(stream):
    """A SentencePiece decoder drops the first piece's leading space (``▁Get`` → ``Get``): the
    protocol line is still ``Action: Get …``, invoked or streamed."""
    gen, chat = chat_for("Get Photo Description\nAction Input: image/a.png")
    bound = chat.bind_tools(TOOLS, tool_choice="any")
    msg = _aggregate(list(bound.stream("x"))) if stream else bound.invoke("x")
    assert msg.response_metadata["raw_text"] == f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png"
    assert msg.tool_calls[0]["args"] == {"image_path": "image/a.png"}


@pytest.mark.parametrize("template,marker", [("vicuna_v1_5", "step by step.\nASSISTANT: "),
                                             ("alpaca", "### Response: ")])
def test_prefill_follows_the_answer_marker_after_a_space(template, marker):
    # Trained text is "ASSISTANT: Thought: …": without the space the forced tokens differ from training.
    gen, chat = chat_for(" Get Photo Description\nAction Input: image/a.png", template=template)
    msg = chat.bind_tools(TOOLS, tool_choice="any").invoke("x")
    assert gen.calls[0][0].endswith(f"{marker}{YES}\nAction:")
    assert msg.response_metadata["raw_text"].startswith(YES)  # the separator is not part of the answer
    assert msg.tool_calls[0]["args"] == {"image_path": "image/a.png"}


def test_tool_choice_name_and_single_tool_any_prefill_the_input_line():
    gen, chat = chat_for(" image/a.png, is it red, or blue?", " image/b.png")
    msg = chat.bind_tools(TOOLS, tool_choice="Answer Question About The Image").invoke("x")
    assert gen.calls[0][0].endswith(f"{YES}\nAction: Answer Question About The Image\nAction Input:")
    assert msg.tool_calls[0]["args"] == {"image_path": "image/a.png", "question": "is it red, or blue?"}
    msg = chat.bind_tools([caption], tool_choice="required").invoke("x")
    assert msg.tool_calls[0] == {**msg.tool_calls[0], "name": "Get Photo Description", "args": {"image_path": "image/b.png"}}


def test_tool_choice_none_prefills_an_answer():
    gen, chat = chat_for(" Just text.")
    msg = chat.bind_tools(TOOLS, tool_choice="none").invoke("x")
    assert gen.calls[0][0].endswith(f"step by step.\n{NO}\nAI:")
    assert msg.content == "Just text." and not msg.tool_calls


def test_tool_choice_validation():
    _, chat = chat_for()
    with pytest.raises(ConfigError, match="not one of the bound tools"):
        chat.bind_tools(TOOLS, tool_choice="Nope")
    with pytest.raises(ConfigError):
        chat.bind_tools(TOOLS, tool_choice=3.5)


def test_structured_output_via_tools():
    from pydantic import BaseModel

    class Answer(BaseModel):
        """An answer with its confidence."""

        text: str
        confidence: float

    gen, chat = chat_for(" a cat, 0.9")
    out = chat.with_structured_output(Answer).invoke("x")
    assert out == Answer(text="a cat", confidence=0.9)
    assert gen.calls[0][0].endswith(f"{YES}\nAction: Answer\nAction Input:")


# -- streaming -----------------------------------------------------------------------------------------
def _aggregate(chunks):
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def test_stream_tool_call():
    out = f"{YES}\nAction: Answer Question About The Image\nAction Input: image/a.png, what, really?\nObservation: x"
    _, chat = chat_for(out, out, out, out)
    bound = chat.bind_tools(TOOLS)
    chunks = list(bound.stream("x"))
    reasoning = [c.additional_kwargs["reasoning_content"] for c in chunks if c.additional_kwargs.get("reasoning_content")]
    assert reasoning == ["Do I need to use a tool? Yes"]
    tc_chunks = [c for c in chunks if c.tool_call_chunks]
    assert len(tc_chunks) == 1
    [tcc] = tc_chunks[0].tool_call_chunks
    # index 1: the call is the message's second content block, after the reasoning
    assert tcc["index"] == 1 and json.loads(tcc["args"]) == {"image_path": "image/a.png", "question": "what, really?"}
    assert all(c.content == "" for c in chunks)
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["total_tokens"] > 0
    full = _aggregate(chunks)
    invoked = bound.invoke("x")
    assert [(t["name"], t["args"]) for t in full.tool_calls] == [(t["name"], t["args"]) for t in invoked.tool_calls]
    assert full.response_metadata["raw_text"] == invoked.response_metadata["raw_text"]
    # output_version="v1": the streamed message's content blocks are the invoked one's (the call is a
    # block of its own, not folded into the reasoning block)
    v1 = chat.model_copy(update={"output_version": "v1"}).bind_tools(TOOLS)
    streamed, called = _aggregate(list(v1.stream("x"))), v1.invoke("x")
    assert [b["type"] for b in streamed.content_blocks] == [b["type"] for b in called.content_blocks] == [
        "reasoning", "tool_call"]
    assert [(b["name"], b["args"]) for b in streamed.content_blocks if b["type"] == "tool_call"] == [
        ("Answer Question About The Image", {"image_path": "image/a.png", "question": "what, really?"})]


def test_stream_answer_streams_content_in_pieces():
    out = f"{NO}\nAI: It is a red car parked by the road."
    _, chat = chat_for(out)
    chunks = list(chat.bind_tools(TOOLS).stream("x"))
    content = [c.content for c in chunks if c.content]
    assert len(content) > 3
    assert "".join(content) == "It is a red car parked by the road."
    assert _aggregate(chunks).additional_kwargs["reasoning_content"] == "Do I need to use a tool? No"


def test_stream_tool_call_chunk_comes_when_the_input_line_is_complete():
    """The chunk is emitted as soon as the Action Input line ends, before the stream finishes."""
    out = f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png\nThought: more text follows here"
    gen = ScriptedGenerator([out], prompt_template="raw", chunk_size=4)
    chat = ChatImageBindLLM(model=gen)
    chunks = list(chat.bind_tools(TOOLS).stream("x"))
    idx = next(i for i, c in enumerate(chunks) if c.tool_call_chunks)
    assert idx < len(chunks) - 1
    assert _aggregate(chunks).tool_calls[0]["args"] == {"image_path": "image/a.png"}


@pytest.mark.parametrize(
    "output",
    [
        f"{YES}",
        f"{YES}\nAction: Delete Everything\nAction Input: {{\"a\": 1}}",
        f"{YES}\nAction: Get Photo Description",
    ],
)
def test_stream_invalid_calls_stay_invalid(output):
    _, chat = chat_for(output, output)
    bound = chat.bind_tools(TOOLS)
    full = _aggregate(list(bound.stream("x")))
    assert full.tool_calls == []
    assert len(full.invalid_tool_calls) == 1
    invoked = bound.invoke("x").invalid_tool_calls
    assert len(invoked) == 1
    # Chunk aggregation drops ``error``; the reason survives in additional_kwargs, keyed by call id.
    [call] = full.invalid_tool_calls
    assert full.additional_kwargs["tool_call_errors"] == {call["id"]: invoked[0]["error"]}
    assert invoked[0]["error"]


def test_stream_plain_text_under_tools_and_empty_output():
    _, chat = chat_for("The answer is simply forty-two, friend.", "")
    bound = chat.bind_tools(TOOLS)
    full = _aggregate(list(bound.stream("x")))
    assert full.content == "The answer is simply forty-two, friend." and not full.tool_calls
    full = _aggregate(list(bound.stream("x")))
    assert full.content == "" and not full.tool_calls and not full.invalid_tool_calls


@pytest.mark.parametrize("chunk_size", [1, 3, 200])
def test_stream_and_invoke_agree_on_action_then_imagined_answer(chunk_size):
    out = f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png\nAI: a cat"
    gen = ScriptedGenerator([out, out], prompt_template="raw", chunk_size=chunk_size)
    bound = ChatImageBindLLM(model=gen).bind_tools(TOOLS)
    full = _aggregate(list(bound.stream("x")))
    invoked = bound.invoke("x")
    assert [t["args"] for t in full.tool_calls] == [t["args"] for t in invoked.tool_calls] == [{"image_path": "image/a.png"}]
    assert full.content == invoked.content == ""


CONSISTENCY_OUTPUTS = [
    f"{NO}\nAI: A cat on a sofa.",
    f"{NO}\nAI:   spaced answer   \n",
    f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png",
    f"{YES}\nAction: get photo descripton\nAction Input: image/a.png\nObservation: x\nThought: y",
    f"{YES}\nAction: Answer Question About The Image\nAction Input: image/a.png, why, though?",
    f"{YES}\nAction: Answer Question About The Image\nAction Input: image/a.png",
    f"{YES}\nAction: Unknown Tool\nAction Input: q",
    f"{YES}\nAction: Get Photo Description",
    f"{YES}",
    f"{NO}",
    f"{NO}\nno prefix answer",
    "plain words with no protocol at all, long enough",
    "short",
    "",
    "\n\n",
    "Observation: imagined",
]


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1000])
@pytest.mark.parametrize("output", CONSISTENCY_OUTPUTS)
def test_stream_aggregate_equals_invoke(output, chunk_size, retries):
    gen = ScriptedGenerator([output], prompt_template="raw", chunk_size=chunk_size, repeat_last=True)
    bound = ChatImageBindLLM(model=gen, invalid_retries=retries).bind_tools(TOOLS)
    invoked = bound.invoke("x")
    chunks = list(bound.stream("x"))
    full = _aggregate(chunks)
    assert full.content == invoked.content
    assert [(t["name"], t["args"]) for t in full.tool_calls] == [(t["name"], t["args"]) for t in invoked.tool_calls]
    assert [(t["name"], t["args"]) for t in full.invalid_tool_calls] == [
        (t["name"], t["args"]) for t in invoked.invalid_tool_calls
    ]
    assert full.additional_kwargs.get("reasoning_content") == invoked.additional_kwargs.get("reasoning_content")
    assert full.response_metadata["raw_text"] == invoked.response_metadata["raw_text"]
    assert sum(c.chunk_position == "last" for c in chunks) == 1 and chunks[-1].chunk_position == "last"
    assert full.usage_metadata == invoked.usage_metadata
    assert len(gen.calls) == 2 * (1 + (retries if invoked.invalid_tool_calls else 0))


def test_demo_variant_prompt_and_announcement():
    raw = f"{YES}\nAction: Get Photo Description\nAction Input: image/ab12cd34.png"
    gen, chat = chat_for(raw, f"{NO}\nAI: A cat.", protocol="demo")
    bound = chat.bind_tools([caption])
    image = {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png",
             "extras": {"name": "image/ab12cd34.png", "description": "A cat"}}
    human = HumanMessage(content=[{"type": "text", "text": "describe it"}, image])
    first = bound.invoke([human])
    bound.invoke([human, first, ToolMessage("a cat on a sofa", tool_call_id=first.tool_calls[0]["id"])])
    history = "Human: Provide an image named image/ab12cd34.png. The description is: A cat. Understand the image using tools.\nAI: Received."
    expected = P.render_prompt(
        [P.ToolSpec("Get Photo Description", CAPTION_DESC)], "describe it", chat_history=history,
        scratchpad=raw + "\nObservation: a cat on a sofa\n", variant="demo",
    )
    assert gen.calls[1][0] == expected
    assert "{ai_prefix}" not in expected and "\nAI: [your response here]\n" in expected
    assert "Previous conversation:\nHuman: Provide" in expected  # demo: no empty line after the header


# -- invalid_retries -----------------------------------------------------------------------------------
BAD = f"{YES}\nAction: Summon Dragons\nAction Input: image/a.png"
GOOD = f"{YES}\nAction: Get Photo Description\nAction Input: image/a.png"


def test_invalid_step_is_fed_back_and_regenerated():
    gen, chat = chat_for(BAD, GOOD, invalid_retries=1)
    msg = chat.bind_tools(TOOLS).invoke("describe image/a.png")
    assert msg.tool_calls[0]["name"] == "Get Photo Description" and not msg.invalid_tool_calls
    assert msg.response_metadata["raw_text"] == GOOD and msg.response_metadata["invalid_retries"] == 1
    error = "Error: unknown tool 'Summon Dragons'; the bound tools are ['Get Photo Description', 'Answer Question About The Image']"
    assert gen.calls[1][0] == expected_prompt("describe image/a.png", scratchpad=f"{BAD}\nObservation: {error}\n")
    assert msg.usage_metadata["output_tokens"] == gen.count_tokens(BAD) + gen.count_tokens(GOOD)


def test_retries_are_bounded_and_the_last_invalid_step_is_returned():
    gen, chat = chat_for(BAD, BAD, BAD, invalid_retries=2)
    msg = chat.bind_tools(TOOLS).invoke("x")
    assert len(gen.calls) == 3 and msg.invalid_tool_calls and not msg.tool_calls
    assert gen.calls[2][0].count("Observation: Error: unknown tool") == 2
    _, chat = chat_for(BAD, GOOD)  # default: no retry
    assert chat.bind_tools(TOOLS).invoke("x").invalid_tool_calls
    with pytest.raises(ConfigError, match="invalid_retries"):
        chat_for(invalid_retries=-1)


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_stream_retry_emits_only_the_accepted_attempt(chunk_size):
    answer = f"{NO}\nAI: It is a cat."
    gen = ScriptedGenerator([BAD + "\nObservation: x", answer, BAD, answer], prompt_template="raw", chunk_size=chunk_size)
    bound = ChatImageBindLLM(model=gen, invalid_retries=1).bind_tools(TOOLS)
    chunks = list(bound.stream("x"))
    full = _aggregate(chunks)
    assert full.content == "It is a cat." and not full.tool_calls and not full.invalid_tool_calls
    assert full.additional_kwargs["reasoning_content"] == "Do I need to use a tool? No"  # only one thought
    assert full.response_metadata["invalid_retries"] == 1
    assert gen.calls[1][0].endswith(f"{BAD}\nObservation: Error: unknown tool 'Summon Dragons'; the bound tools are "
                                    "['Get Photo Description', 'Answer Question About The Image']\n")
    invoked = bound.invoke("x")
    assert invoked.content == full.content and gen.calls[3][0] == gen.calls[1][0]


def test_agent_recovers_from_an_invalid_step_with_retries():
    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver

    gen = ScriptedGenerator([BAD, GOOD, f"{NO}\nAI: A cat."], prompt_template="raw")
    agent = create_agent(ChatImageBindLLM(model=gen, invalid_retries=1), tools=TOOLS, checkpointer=InMemorySaver())
    out = agent.invoke({"messages": [HumanMessage("describe image/a.png")]}, {"configurable": {"thread_id": "r"}})
    assert out["messages"][-1].content == "A cat."
    assert [type(m).__name__ for m in out["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
