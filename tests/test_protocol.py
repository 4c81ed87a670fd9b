"""GPT4Tools protocol: byte-exact prompt rendering, tool selection, step parsing, argument mapping."""

from __future__ import annotations

import re

import pytest
from conftest import shared_path
from ibllm_agent.prompts import GPT4TOOLS_VARIANTS, gpt4tools_blocks, read_template

from ibllm_agent import protocol as P
from ibllm_agent.errors import ConfigError, ToolArgumentError

# The verbatim blocks, typed here from the spec (§1.2, §1.3) so a change to a prompt file fails.
PREFIX = (
    "GPT4Tools can handle various text and visual tasks, such as answering questions and providing "
    "in-depth explanations and discussions. It generates human-like text and uses tools to indirectly "
    "understand images. When referring to images, GPT4Tools follows strict file name rules. To complete "
    "visual tasks, GPT4Tools uses tools and stays loyal to observation outputs. Users can provide new "
    "images to GPT4Tools with a description, but tools must be used for subsequent tasks.\n"
    "TOOLS:\n------\n\nGPT4Tools has access to the following tools:"
)
FORMAT = (
    "To use a tool, please use the following format:\n\n```\nThought: Do I need to use a tool? Yes\n"
    "Action: the action to take, should be one of [{tool_names}]\nAction Input: the input to the action\n"
    "Observation: the result of the action\n```\n\nWhen you have a response to say to the Human, or if you "
    "do not need to use a tool, you MUST use the format:\n\n```\nThought: Do I need to use a tool? No\n"
    "{ai_prefix}: [your response here]\n```\n"
)
SUFFIX_HEAD = (
    "Follow file name rules and do not fake non-existent file names. Remember to provide the image file "
    "name loyally from the last tool observation.\n\nPrevious conversation:\n"
)
SUFFIX_TAIL = (
    "GPT4Tools needs to use tools to observe images, not directly imagine them. Thoughts and observations "
    "in the conversation are only visible to GPT4Tools. When answering human questions, repeat important "
    "information. Let's think step by step.\n"
)

CAPTION = P.ToolSpec(
    "Get Photo Description",
    "useful when you want to know what is inside the photo. receives image_path as input. The input to "
    "this tool should be a string, representing the image_path.",
    {"type": "object", "properties": {"image_path": {"type": "string"}}, "required": ["image_path"]},
)
VQA = P.ToolSpec(
    "Answer Question About The Image",
    "useful when you need an answer for a question based on an image. like: what is the background color "
    "of the last image, how many cats in this figure, what is in this figure. The input to this tool "
    "should be a comma separated string of two, representing the image_path and the question",
    {
        "type": "object",
        "properties": {"image_path": {"type": "string"}, "question": {"type": "string"}},
        "required": ["image_path", "question"],
    },
)
REPLACE = P.ToolSpec(
    "Replace Something From The Photo",
    "useful when you want to replace an object from the object description or location with another object",
    {
        "type": "object",
        "properties": {
            "image_path": {"type": "string"},
            "to_replace": {"type": "string"},
            "replacement": {"type": "string"},
        },
        "required": ["image_path", "to_replace", "replacement"],
    },
)
GENERATE = P.ToolSpec(
    "Generate Image From User Input Text",
    "useful when you want to generate an image from a user input text and save it to a file. The input to "
    "this tool should be a string, representing the text used to generate image.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


# -- verbatim blocks -----------------------------------------------------------------------------------
def test_training_blocks_are_verbatim():
    prefix, fmt, suffix, announce = gpt4tools_blocks("training")
    assert prefix == PREFIX
    assert fmt == FORMAT.replace("{ai_prefix}", "AI")
    # training: empty line after "Previous conversation:", ends after "step by step.\n", no scratchpad slot
    assert suffix == SUFFIX_HEAD + "\n{chat_history}\n\nNew input: {input}\n" + SUFFIX_TAIL
    assert announce == (
        "Human: Provide {a_kind} named {name}. Description: {description} Understand the {kind} using tools."
        "\nAI: Received."
    )


def test_demo_blocks_are_verbatim():
    prefix, fmt, suffix, announce = gpt4tools_blocks("demo")
    assert prefix == PREFIX
    assert fmt == FORMAT
    assert suffix == SUFFIX_HEAD + "{chat_history}\n\nNew input: {input}\n" + SUFFIX_TAIL + "{agent_scratchpad}"
    assert "The description is: {description}." in announce


def _spec_block(spec: str, pattern: str) -> str:
    match = re.search(pattern, spec, re.DOTALL)
    assert match, pattern
    return match.group(1)


def test_prompt_files_match_the_spec_text():
    """The shipped demo files equal the fenced blocks of the research spec, byte for byte."""
    spec = shared_path("spec", "gpt4tools_and_langchain.md").read_text(encoding="utf-8")
    section = spec[spec.index("### 1.2 Verbatim") : spec.index("### 1.3")]
    assert read_template("gpt4tools_demo_prefix.txt") == _spec_block(section, r"PREFIX \(ends.*?\n\n```\n(.*?)\n```")
    assert read_template("gpt4tools_demo_format.txt") == _spec_block(section, r"````\n(.*?)````")
    assert read_template("gpt4tools_demo_suffix.txt") == _spec_block(section, r"SUFFIX:\n\n```\n(.*?)\n```")


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        gpt4tools_blocks("bogus")
    assert set(GPT4TOOLS_VARIANTS) == {"training", "demo"}


# -- whole prompt --------------------------------------------------------------------------------------
def test_render_prompt_training_is_byte_exact():
    history = (
        "Human: Provide an image named image/alzkcuai.png. Description: A person is lying on the grass. "
        "Understand the image using tools.\nAI: Received."
    )
    got = P.render_prompt([CAPTION, VQA], "Remove the person in the image.", chat_history=history)
    expected = (
        PREFIX
        + "\n\n"
        + f"> {CAPTION.name}: {CAPTION.description}\n> {VQA.name}: {VQA.description}"
        + "\n\n"
        + FORMAT.replace("{tool_names}", f"{CAPTION.name}, {VQA.name}").replace("{ai_prefix}", "AI")
        + "\n\n"
        + SUFFIX_HEAD
        + "\n"
        + history
        + "\n\nNew input: Remove the person in the image.\n"
        + SUFFIX_TAIL
    )
    assert got == expected


def test_render_prompt_demo_with_scratchpad_and_system():
    pad = P.render_scratchpad([P.ScratchStep("Thought: Do I need to use a tool? Yes\nAction: A\nAction Input: x", "y")])
    assert pad == "Thought: Do I need to use a tool? Yes\nAction: A\nAction Input: x\nObservation: y\n"
    got = P.render_prompt([GENERATE], "draw {a cat}", chat_history="", scratchpad=pad, variant="demo", system="SYS")
    expected = (
        "SYS\n\n"
        + PREFIX
        + "\n\n"
        + f"> {GENERATE.name}: {GENERATE.description}\n\n"
        + FORMAT.replace("{tool_names}", GENERATE.name).replace("{ai_prefix}", "AI")
        + "\n\n"
        + SUFFIX_HEAD
        + "\n\nNew input: draw {a cat}\n"
        + SUFFIX_TAIL
        + pad
    )
    assert got == expected


def test_user_text_is_not_scanned_for_slots():
    got = P.render_prompt([GENERATE], "say {chat_history} and {agent_scratchpad}", chat_history="H")
    assert "New input: say {chat_history} and {agent_scratchpad}\n" in got


def test_announcements():
    human, ai = P.render_announcement("image/ab.png", "image", "A dog.")
    assert human == "Human: Provide an image named image/ab.png. Description: A dog. Understand the image using tools."
    assert ai == "AI: Received."
    human, _ = P.render_announcement("image/ab.png", "image", "A dog", variant="demo")
    assert human == (
        "Human: Provide an image named image/ab.png. The description is: A dog. Understand the image using tools."
    )
    human, _ = P.render_announcement("point/x.ply", "point", "A chair.")
    assert human == "Human: Provide a point cloud named point/x.ply. Description: A chair. Understand the point cloud using tools."
    assert P.default_description("audio") == "An attached audio clip."


def test_media_name_is_stable_and_typed():
    a = P.media_name("image", b"\x89PNG bytes")
    assert a == P.media_name("image", b"\x89PNG bytes")
    assert re.fullmatch(r"image/[0-9a-f]{8}\.png", a)
    assert a != P.media_name("image", b"other")
    assert P.media_name("audio", "/x/y.wav").startswith("audio/") and P.media_name("audio", "/x/y.wav").endswith(".wav")
    assert P.media_name("point", b"p").endswith(".ply")


def test_history_policies():
    ex = [P.Exchange("hi", "hello"), P.Exchange("Human: Provide x", "AI: Received."), P.Exchange("q", "a")]
    assert P.render_history(ex, "last_exchange") == "Human: q\nAI: a"
    assert P.render_history(ex, "full") == "Human: hi\nAI: hello\nHuman: Provide x\nAI: Received.\nHuman: q\nAI: a"
    assert P.render_history([P.Exchange("only")], "full") == "Human: only"
    # "full" drops the oldest exchanges until the text fits
    assert P.render_history(ex, "full", fits=lambda t: len(t) < 50) == "Human: Provide x\nAI: Received.\nHuman: q\nAI: a"
    with pytest.raises(ConfigError):
        P.render_history(ex, "everything")  # type: ignore[arg-type]


# -- tool selection and names --------------------------------------------------------------------------
def test_select_tools_by_relevance_and_required():
    tools = [GENERATE, REPLACE, CAPTION, VQA]
    got = P.select_tools(tools, "what color is the background of image/a.png? answer the question", 2)
    assert [t.name for t in got] == [VQA.name, CAPTION.name]  # VQA: 4 shared words; caption: "what"
    got = P.select_tools(tools, "generate an image of a cat", 1, required=[REPLACE.name])
    assert [t.name for t in got] == [REPLACE.name]  # required fills the budget
    got = P.select_tools(tools, "generate an image of a cat", 2, required=[REPLACE.name])
    assert {t.name for t in got} == {GENERATE.name, REPLACE.name} and got[0] is GENERATE
    assert len(P.select_tools(tools, "", 0)) == 4  # 0 = no limit
    # ties keep the caller's order
    assert [t.name for t in P.select_tools(tools, "zzz", 3)] == [GENERATE.name, REPLACE.name, CAPTION.name]


def test_tool_lines_and_names():
    assert P.render_tool_lines([CAPTION, GENERATE]) == f"> {CAPTION.name}: {CAPTION.description}\n> {GENERATE.name}: {GENERATE.description}"
    assert P.render_tool_names([CAPTION, GENERATE]) == f"{CAPTION.name}, {GENERATE.name}"


@pytest.mark.parametrize(
    "emitted, expected",
    [
        ("Get Photo Description", "Get Photo Description"),
        ("get photo description", "Get Photo Description"),
        ("  Get_Photo-Description ", "Get Photo Description"),
        ("Get Photo Descripton", "Get Photo Description"),  # typo
        ("[Answer Question About The Image]", "Answer Question About The Image"),
        ("Delete Everything", None),
        ("", None),
    ],
)
def test_match_tool_name(emitted, expected):
    assert P.match_tool_name(emitted, [CAPTION.name, VQA.name, GENERATE.name]) == expected


def test_tool_spec_from_openai_dict():
    spec = P.tool_spec({"type": "function", "function": {"name": "f", "description": "d", "parameters": {"properties": {"a": {}}}}})
    assert (spec.name, spec.description, spec.param_names) == ("f", "d", ["a"])
    with pytest.raises(ConfigError):
        P.tool_spec({"type": "function", "function": {"description": "no name"}})


# -- argument mapping ----------------------------------------------------------------------------------
def test_map_arguments_comma_semantics():
    assert P.map_arguments("image/a.png", CAPTION) == {"image_path": "image/a.png"}
    # one parameter takes the whole string, commas included
    assert P.map_arguments("a cat, a dog, and a bird", GENERATE) == {"text": "a cat, a dog, and a bird"}
    # remainder joins the last field, original text kept
    assert P.map_arguments("image/a.png, what is it, really?", VQA) == {
        "image_path": "image/a.png",
        "question": "what is it, really?",
    }
    assert P.map_arguments('"image/a.png, dog, cat, big"', REPLACE) == {
        "image_path": "image/a.png",
        "to_replace": "dog",
        "replacement": "cat, big",
    }
    assert P.map_arguments('{"image_path": "x.png", "question": "q, r"}', VQA) == {"image_path": "x.png", "question": "q, r"}
    legacy = P.ToolSpec("L", "", {"properties": {"__arg1": {"type": "string"}}, "required": ["__arg1"]})
    assert P.map_arguments("a, b", legacy) == {"__arg1": "a, b"}
    assert P.map_arguments("ignored", P.ToolSpec("none", "", {"properties": {}})) == {}


def test_map_arguments_types_and_errors():
    typed = P.ToolSpec(
        "T", "",
        {
            "properties": {"n": {"type": "integer"}, "x": {"type": "number"}, "flag": {"type": "boolean"}, "opt": {"type": "string"}},
            "required": ["n", "x"],
        },
    )
    assert P.map_arguments("3, 2.5", typed) == {"n": 3, "x": 2.5}
    assert P.map_arguments("3, 2.5, yes, rest, more", typed) == {"n": 3, "x": 2.5, "flag": True, "opt": "rest, more"}
    with pytest.raises(ToolArgumentError, match="'n' expects integer"):
        P.map_arguments("three, 2", typed)
    with pytest.raises(ToolArgumentError, match="expects 2 comma-separated"):
        P.map_arguments("3", typed)
    with pytest.raises(ToolArgumentError, match="expects 2"):
        P.map_arguments("image/a.png", VQA)
    with pytest.raises(ToolArgumentError):
        P.map_arguments("", VQA)


def test_render_action_input_inverts_mapping():
    args = {"question": "what, exactly?", "image_path": "a.png"}
    raw = P.render_action_input(args, VQA)
    assert raw == "a.png, what, exactly?"
    assert P.map_arguments(raw, VQA) == args


# -- parsing -------------------------------------------------------------------------------------------
def test_parse_action():
    step = P.parse_step("Thought: Do I need to use a tool? Yes\nAction: Get Photo Description\nAction Input: image/a.png")
    assert (step.kind, step.action, step.action_input, step.thought) == (
        "action", "Get Photo Description", "image/a.png", "Do I need to use a tool? Yes"
    )


def test_parse_final_answer_takes_text_after_last_ai():
    step = P.parse_step("Thought: Do I need to use a tool? No\nAI: first\nAI: Result saved as image/b.png \n")
    assert (step.kind, step.answer) == ("final", "Result saved as image/b.png")


def test_parse_cuts_hallucinated_observation():
    text = (
        "Thought: Do I need to use a tool? Yes\nAction: Get Photo Description\nAction Input: image/a.png\n"
        "Observation: a cat on a sofa\nThought: Do I need to use a tool? No\nAI: a cat"
    )
    step = P.parse_step(text)
    assert step.kind == "action" and step.action_input == "image/a.png"
    assert "Observation" not in step.raw
    assert P.parse_step("Observation: made up\nAI: x").kind == "final"
    assert P.parse_step("Observation: made up\nAI: x").answer == ""


@pytest.mark.parametrize(
    "text, kind, error",
    [
        ("Thought: Do I need to use a tool? Yes\nAction: Get Photo Description\n", "invalid", "Action Input"),
        ("Thought: Do I need to use a tool? Yes", "invalid", "named no 'Action:'"),
        ("Yes", "final", None),
        ("", "final", None),
        ("Thought: Do I need to use a tool? Yes\nAction: \nAction Input: x", "invalid", "empty tool name"),
    ],
)
def test_parse_malformed(text, kind, error):
    step = P.parse_step(text)
    assert step.kind == kind
    if error:
        assert error in step.error
    else:
        assert step.error is None


def test_parse_plain_text_and_no_thought():
    step = P.parse_step("  just words  ")
    assert (step.kind, step.answer, step.protocol) == ("final", "just words", False)
    step = P.parse_step("Thought: Do I need to use a tool? No\nThe sky is blue.")
    assert (step.kind, step.answer, step.protocol) == ("final", "The sky is blue.", True)
    # "AI:" inside a word is not the prefix
    assert P.parse_step("OpenAI: hello").answer == "OpenAI: hello"


def test_action_input_strips_quotes_like_legacy_parser():
    step = P.parse_step('Action: Generate Image From User Input Text\nAction Input: "a red car" ')
    assert step.action_input == "a red car"


# -- prefill and tool_choice ---------------------------------------------------------------------------
def test_prefill_for_tool_choice():
    assert P.prefill_for(None, [CAPTION, VQA]) == ""
    assert P.prefill_for("auto", [CAPTION, VQA]) == ""
    assert P.prefill_for("none", [CAPTION]) == "Thought: Do I need to use a tool? No\nAI:"
    # Prefills end at the colon: the space is part of the model's next token (SentencePiece "▁value").
    assert P.prefill_for("any", [CAPTION, VQA]) == "Thought: Do I need to use a tool? Yes\nAction:"
    assert P.prefill_for("any", [CAPTION]) == (
        "Thought: Do I need to use a tool? Yes\nAction: Get Photo Description\nAction Input:"
    )
    assert P.prefill_for(VQA.name, [CAPTION, VQA]).endswith(f"Action: {VQA.name}\nAction Input:")


def test_join_prefill_restores_the_space_after_a_final_colon():
    assert P.join_prefill("Action Input:", "5") == "Action Input: 5"
    assert P.join_prefill("Action Input:", " 5") == "Action Input: 5"
    assert P.join_prefill("Action Input:", "\n") == "Action Input:\n"
    assert P.join_prefill("Action Input:", "") == "Action Input:"
    assert P.join_prefill("", "Thought") == "Thought"


def test_tool_choice_name_forms():
    assert P.tool_choice_name(None) is None
    assert P.tool_choice_name(True) == "any"
    assert P.tool_choice_name({"type": "function", "function": {"name": "f"}}) == "f"
    assert P.tool_choice_name({"type": "any"}) == "any"
    with pytest.raises(ConfigError):
        P.tool_choice_name(3)


def test_cut_at_stop():
    assert P.cut_at_stop("a\nObservation: b") == ("a", True)
    assert P.cut_at_stop("a\n\tObservation: b") == ("a", True)
    assert P.cut_at_stop("a b", ["zz"]) == ("a b", False)


def test_action_before_ai_wins_over_an_imagined_answer():
    text = "Thought: Do I need to use a tool? Yes\nAction: Get Photo Description\nAction Input: image/a.png\nAI: a cat"
    step = P.parse_step(text)
    assert (step.kind, step.action, step.action_input) == ("action", "Get Photo Description", "image/a.png")
    # an answer first, then a stray action: the answer wins (legacy: text after the last "AI:")
    step = P.parse_step("Thought: Do I need to use a tool? No\nAI: done\nAction: X\nAction Input: y")
    assert (step.kind, step.answer) == ("final", "done\nAction: X\nAction Input: y")


# -- tools whose description does not state their inputs (LangChain tools) ---------------------------------
def test_tool_line_states_inputs_the_description_omits():
    one_int = P.ToolSpec("double_it", "Double a number.", {"type": "object", "properties": {"n": {"type": "integer"}}})
    assert P.render_tool_line(one_int) == (
        "> double_it: Double a number. The input to this tool should be an integer, representing the n"
    )
    two = P.ToolSpec("Riddle", "Riddle to tell.", {"type": "object", "properties": {"q": {"type": "string"}, "a": {}}})
    assert P.render_tool_line(two) == (
        "> Riddle: Riddle to tell. The input to this tool should be a comma separated string of two, "
        "representing the q, the a"
    )
    # Described already (GPT4Tools' own tools), no parameters, or no description: nothing added/only it.
    assert P.render_tool_line(GENERATE) == f"> {GENERATE.name}: {GENERATE.description}"
    assert P.render_tool_line(P.ToolSpec("ping", "Ping.", {})) == "> ping: Ping."
    bare = P.ToolSpec("flag", "", {"type": "object", "properties": {"on": {"type": "boolean"}}})
    assert P.render_tool_line(bare) == "> flag: The input to this tool should be true or false, representing the on"
