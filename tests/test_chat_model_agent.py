"""ChatImageBindLLM inside ``langchain.agents.create_agent`` with a checkpointer, over a scripted model."""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.testing import ScriptedGenerator

YES = "Thought: Do I need to use a tool? Yes"
NO = "Thought: Do I need to use a tool? No"
CALLS: list[tuple[str, dict]] = []


@tool("Get Photo Description")
def describe(image_path: str) -> str:
    """useful when you want to know what is inside the photo. receives image_path as input."""
    CALLS.append(("describe", {"image_path": image_path}))
    return "a cat sitting on a red sofa"


@tool("Answer Question About The Image")
def answer(image_path: str, question: str) -> str:
    """useful when you need an answer for a question based on an image. The input to this tool should be
    a comma separated string of two, representing the image_path and the question"""
    CALLS.append(("answer", {"image_path": image_path, "question": question}))
    return "red"


def _cfg(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


def test_two_turn_round_trip_with_memory():
    CALLS.clear()
    step1 = f"{YES}\nAction: Get Photo Description\nAction Input: image/ab12cd34.png"
    step2 = f"{NO}\nAI: The image shows a cat sitting on a red sofa."
    step3 = f"{YES}\nAction: Answer Question About The Image\nAction Input: image/ab12cd34.png, what color is the sofa, exactly?"
    step4 = f"{NO}\nAI: The sofa is red."
    gen = ScriptedGenerator([step1, step2, step3, step4])
    agent = create_agent(ChatImageBindLLM(model=gen), tools=[describe, answer], checkpointer=InMemorySaver())

    out1 = agent.invoke({"messages": [HumanMessage("describe image/ab12cd34.png")]}, _cfg("t1"))
    assert out1["messages"][-1].content == "The image shows a cat sitting on a red sofa."
    out2 = agent.invoke({"messages": [HumanMessage("what color is the sofa?")]}, _cfg("t1"))
    assert out2["messages"][-1].content == "The sofa is red."

    # the tools really ran, with comma-split arguments
    assert CALLS == [
        ("describe", {"image_path": "image/ab12cd34.png"}),
        ("answer", {"image_path": "image/ab12cd34.png", "question": "what color is the sofa, exactly?"}),
    ]
    # the checkpoint holds the whole thread: 2 turns x (human, tool call, tool result, answer)
    kinds = [type(m).__name__ for m in out2["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"] * 2
    assert len({m.tool_calls[0]["id"] for m in out2["messages"] if isinstance(m, AIMessage) and m.tool_calls}) == 2

    prompts = gen.prompts
    assert len(prompts) == 4
    # step 2 replays step 1's raw text and the observation byte-exact
    assert prompts[1].endswith("step by step.\n" + step1 + "\nObservation: a cat sitting on a red sofa\n")
    # turn 2: last exchange of turn 1 in the history, no scratchpad from turn 1
    assert "Previous conversation:\n\nHuman: describe image/ab12cd34.png\nAI: The image shows a cat sitting on a red sofa.\n\nNew input: what color is the sofa?\n" in prompts[2]
    assert prompts[2].endswith("step by step.\n")
    assert prompts[3].endswith(step3 + "\nObservation: red\n")


def test_invalid_tool_call_ends_the_turn_and_the_thread_goes_on():
    """create_agent routes on ``tool_calls`` only: an AIMessage with just ``invalid_tool_calls`` ends the
    run (no exception); on the next model call create_agent patches an error ToolMessage in for it."""
    gen = ScriptedGenerator([
        f"{YES}\nAction: Summon Dragons\nAction Input: image/x.png",
        f"{YES}\nAction: Get Photo Description\nAction Input: image/x.png",
        f"{NO}\nAI: A cat.",
    ])
    agent = create_agent(ChatImageBindLLM(model=gen), tools=[describe, answer], checkpointer=InMemorySaver())
    out = agent.invoke({"messages": [HumanMessage("describe image/x.png")]}, _cfg("t2"))
    bad = out["messages"][-1]
    assert isinstance(bad, AIMessage) and not bad.tool_calls and bad.content == ""
    [call] = bad.invalid_tool_calls
    assert call["name"] == "Summon Dragons" and "unknown tool 'Summon Dragons'" in call["error"]

    out = agent.invoke({"messages": [HumanMessage("please describe image/x.png")]}, _cfg("t2"))
    assert out["messages"][-1].content == "A cat."
    # the failed turn is history now (no answer, so rendered as the human line only)
    assert "Previous conversation:\n\nHuman: describe image/x.png\n\nNew input: please describe image/x.png\n" in gen.prompts[1]
    assert isinstance(out["messages"][-2], ToolMessage) and out["messages"][-2].content == "a cat sitting on a red sofa"


def test_agent_streams_messages():
    gen = ScriptedGenerator([
        f"{YES}\nAction: Get Photo Description\nAction Input: image/x.png",
        f"{NO}\nAI: It is a cat on a sofa.",
    ])
    agent = create_agent(ChatImageBindLLM(model=gen), tools=[describe, answer], checkpointer=InMemorySaver())
    text = ""
    tool_chunks = 0
    for chunk, meta in agent.stream({"messages": [HumanMessage("describe image/x.png")]}, _cfg("t3"), stream_mode="messages"):
        if meta.get("langgraph_node") == "model":
            text += chunk.content if isinstance(chunk.content, str) else ""
            tool_chunks += len(getattr(chunk, "tool_call_chunks", []) or [])
    assert text == "It is a cat on a sofa."
    assert tool_chunks == 1
