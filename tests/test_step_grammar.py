"""StepGuide: the GPT4Tools step grammar the chat model and ``eval tools --guided`` decode under."""

from __future__ import annotations

import pytest

from ibllm_agent import protocol as P
from ibllm_agent.errors import ToolArgumentError
from ibllm_agent.model.guidance import Choose, Filter
from ibllm_agent.step_grammar import StepGuide

YES = P.THOUGHT_YES
WEATHER = P.ToolSpec("get_weather", "Weather of a city.", {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "metric": {"type": "boolean"}},
    "required": ["city", "days"]})
SCALE = P.ToolSpec("scale", "Scale a number.", {
    "type": "object", "properties": {"x": {"type": "number"}, "unit": {"type": "string", "enum": ["cm", "inch"]}},
    "required": ["x", "unit"]})
NOTE = P.ToolSpec("note", "Keep a note.", {
    "type": "object", "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
    "required": ["title", "text"]})
LEGACY = P.ToolSpec("Get Photo Description", "useful when you want to know what is inside the photo.")
GUIDE = StepGuide([WEATHER, SCALE, NOTE, LEGACY])


def test_free_until_the_model_decides_to_use_a_tool():
    assert GUIDE.constraint("") is None
    assert GUIDE.constraint(" Thought: Do I need to use a tool? No\nAI: hello") is None
    assert GUIDE.constraint(f" {YES}") is None  # the thought line itself is the model's
    assert isinstance(GUIDE.constraint(f" {YES}\nAct"), Filter)


def test_the_action_name_is_a_choice_among_the_offered_tools():
    rule = GUIDE.constraint(f" {YES}\nAction:")
    assert isinstance(rule, Choose)
    assert rule.options == (" get_weather\n", " scale\n", " note\n", " Get Photo Description\n")
    assert rule.anchor == f" {YES}\nAction:"
    # after a prefill that already holds the space, options carry none
    rule = StepGuide([NOTE], f"{YES}\nAction: ").constraint("")
    assert isinstance(rule, Choose) and rule.options == ("note\n",)


@pytest.mark.parametrize("text,ok", [
    ("Action", True), ("Actor", False), ("Action: get_w", True), ("Action: get_x", False),
    ("Action: scale\n", True), ("Action: scales\n", False), ("Action: scale\nAction In", True),
    ("Action: scale\nObservation", False),
])
def test_action_lines(text, ok):
    assert GUIDE._viable(f" {YES}\n{text}") is ok


@pytest.mark.parametrize("tool,value,partial,complete", [
    ("get_weather", " paris, 3", True, True),
    ("get_weather", " paris, 3, true", True, True),
    ("get_weather", " paris, 3, tr", True, False),
    ("get_weather", " paris, 3, maybe", False, False),
    ("get_weather", " paris, three", False, False),
    ("get_weather", " paris", True, False),  # `days` is required
    ("get_weather", " paris,", True, False),
    ("get_weather", " , 3", False, False),  # a required string may not be empty
    ("get_weather", "  paris, 3", False, False),  # one space after the colon
    ("get_weather", "paris, 3", False, False),
    ("get_weather", " paris, 12345678901234567", True, True),
    ("get_weather", " paris, 123456789012345678", False, False),  # numbers end
    ("get_weather", " paris, -12", True, True),
    ("scale", " 2.5, cm", True, True),
    ("scale", " 2.5e3, inch", True, True),
    ("scale", " 2.5, mm", False, False),
    ("scale", " 2.5, in", True, False),
    ("scale", " 2.5x", False, False),
    ("note", " groceries, eggs, milk, bread", True, True),  # the last string takes the commas
    ("Get Photo Description", " image/a.png, anything, at all", True, True),  # no schema: free
])
def test_action_input_follows_the_schema(tool, value, partial, complete):
    text = f" {YES}\nAction: {tool}\nAction Input:{value}"
    assert GUIDE._viable(text) is partial
    assert GUIDE._viable(text + "\n", closed=True) is complete


@pytest.mark.parametrize("value", [
    " paris, 3", " paris, 3, true", " paris, 3, tr", " paris", " paris, three", " , 3", " paris, 3, no",
    " 2.5, cm", " 2.5, mm", " groceries, eggs, milk", " x",
])
def test_a_complete_input_the_grammar_accepts_is_one_map_arguments_accepts(value):
    """The grammar and the parser agree: the guide never forces a call the chat model then rejects."""
    for tool in (WEATHER, SCALE, NOTE):
        accepted = GUIDE._viable(f" {YES}\nAction: {tool.name}\nAction Input:{value}\n", closed=True)
        try:
            P.map_arguments(value, tool)
            parsed = True
        except ToolArgumentError:
            parsed = False
        if accepted:
            assert parsed, (tool.name, value)


def test_end_of_line_is_allowed_only_with_every_required_value():
    rule = GUIDE.constraint(f" {YES}\nAction: get_weather\nAction Input: paris")
    assert isinstance(rule, Filter) and not rule.end_ok and rule.instead_of_end == ","
    rule = GUIDE.constraint(f" {YES}\nAction: get_weather\nAction Input: paris, 3")
    assert rule.end_ok and rule.instead_of_end is None
    # an empty value cannot be closed by the separator
    rule = GUIDE.constraint(f" {YES}\nAction: get_weather\nAction Input: paris, ")
    assert not rule.end_ok and rule.instead_of_end is None


def test_the_step_is_free_after_its_action_input_line():
    assert GUIDE.constraint(f" {YES}\nAction: scale\nAction Input: 2, cm\n") is None
    assert GUIDE.constraint(f" {YES}\nAction: scale\nAction Input: 2, cm\nObservation: x") is None


def test_prefill_is_part_of_the_text_read():
    guide = StepGuide([WEATHER], f"{YES}\nAction: get_weather\nAction Input:")
    assert guide._viable(" paris, 4") and not guide._viable(" paris, four")
    assert guide.constraint(" paris").instead_of_end == ","


def test_names_only_guide_leaves_arguments_free():
    guide = StepGuide([WEATHER], arguments=False)
    assert guide._viable(f" {YES}\nAction: get_weather\nAction Input: anything at all\n", closed=True)
    assert not guide._viable(f" {YES}\nAction: get_x")


def test_from_prompt_reads_the_offered_names():
    prompt = P.render_prompt([WEATHER, LEGACY], "what is the weather in paris?")
    guide = StepGuide.from_prompt(prompt)
    assert list(guide.tools) == ["get_weather", "Get Photo Description"] and not guide.arguments
    assert StepGuide.from_prompt("no tools here") is None


# -- file parameters -------------------------------------------------------------------------------------
SPEECH = P.ToolSpec("Transcribe Speech From Audio", "", {
    "type": "object", "properties": {"audio_path": {"type": "string"}, "language": {"type": "string"}},
    "required": ["audio_path"]})
VQA = P.ToolSpec("Answer Question About The Image", "", {
    "type": "object", "properties": {"image_path": {"type": "string"}, "question": {"type": "string"}},
    "required": ["image_path", "question"]})
FILES = ("audio/ab12cd34.wav", "image/9f8e7d6c.png")


def test_a_file_parameter_is_a_choice_among_the_known_files():
    guide = StepGuide([SPEECH, VQA, NOTE], files=FILES)
    rule = guide.constraint(f" {YES}\nAction: Transcribe Speech From Audio\nAction Input:")
    # `language` is optional: the name may end the line or be followed by a comma
    assert isinstance(rule, Choose) and set(rule.options) == {
        f" {f}{end}" for f in FILES for end in (",", "\n")}
    assert rule.anchor == "Action: Transcribe Speech From Audio\nAction Input:"
    rule = guide.constraint(f" {YES}\nAction: Answer Question About The Image\nAction Input:")
    assert rule.options == tuple(f" {f}," for f in FILES)  # the question is required
    # the question after the file is free text; a non-file first value is not a choice
    assert isinstance(guide.constraint(f" {YES}\nAction: Answer Question About The Image\nAction Input: {FILES[1]},"),
                      Filter)
    assert isinstance(guide.constraint(f" {YES}\nAction: note\nAction Input:"), Filter)


def test_a_file_value_must_be_known():
    guide = StepGuide([VQA], files=FILES)
    head = f" {YES}\nAction: Answer Question About The Image\nAction Input:"
    assert guide._viable(f"{head} image/9f8e7d6c.png, what is it?\n", closed=True)
    assert not guide._viable(f"{head} image/00000000.png, what is it?\n", closed=True)
    assert guide._viable(f"{head} image/9f") and not guide._viable(f"{head} image/00")
    # no known files: a file parameter is a plain string
    assert StepGuide([VQA])._viable(f"{head} image/00000000.png, what is it?\n", closed=True)
    assert isinstance(StepGuide([VQA]).constraint(head), Filter)


def test_file_names_in_a_prompt():
    text = ("Human: Provide an image named image/9f8e7d6c.png. Description: x\nAI: Received.\n"
            "New input: what does audio/ab12cd34.wav say? compare with image/9f8e7d6c.png, and foo/x.png")
    assert P.file_names(text) == ["image/9f8e7d6c.png", "audio/ab12cd34.wav"]
