"""build_agent with a scripted generator under ChatImageBindLLM: turns, tools, robustness, threads."""

from __future__ import annotations

import threading

import pytest
from agent_support import (
    NAME_RE,
    announced,
    answer,
    assert_consistent,
    install_fake_plugin,
    last_observation,
    make_image,
    tool_step,
    use_plugin,
)
from PIL import Image

from ibllm_agent.agent import build_agent, gpt4tools_tool
from ibllm_agent.agent.middleware import step_limit_message
from ibllm_agent.testing import ScriptedGenerator


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    root = install_fake_plugin(tmp_path / "plugins")
    use_plugin(monkeypatch, root)
    import fake_ibllm_tools

    fake_ibllm_tools.CALLS.clear()
    return fake_ibllm_tools


def _agent(gen, tmp_path, **kw):
    kw.setdefault("memory", f"sqlite:///{tmp_path / 'mem.sqlite'}")
    return build_agent(gen, workspace=tmp_path / "ws", **kw)


def test_three_turns_image_and_two_tool_calls(tmp_path, plugin):
    img = make_image(tmp_path / "photo.jpg", (640, 480))
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Get Photo Description", announced(p)),
        lambda p, m, s: answer(f"I see {last_observation(p)}."),
        lambda p, m, s: tool_step("Edge Detection On Image", announced(p)),
        lambda p, m, s: answer(f"Result saved as {last_observation(p)}"),
        answer("You're welcome."),
    ])
    with _agent(gen, tmp_path) as agent:
        r1 = agent.send("t1", "What is in this picture?", attachments=[img])
        (name,) = r1.attachments
        assert NAME_RE.fullmatch(name)
        assert r1.answer == "I see a red picture of 512x384 pixels."
        assert [(c.name, c.args, c.status) for c in r1.tool_calls] == [
            ("Get Photo Description", {"image_path": name}, "success")
        ]
        # The model saw the training-style announcement and the image itself as Media.
        first_prompt, media, _ = gen.calls[0]
        assert (f"Human: Provide an image named {name}. Description: An image provided by the user. "
                "Understand the image using tools.\nAI: Received.") in first_prompt
        assert [(x.modality, x.name) for x in media] == [("image", name)]
        # The tool received the absolute path inside the thread workspace.
        ws = agent.workspace.thread("t1")
        assert plugin.CALLS[0] == ("caption", str(ws.resolve(name)))

        r2 = agent.send("t1", f"Detect the edges of {name}")
        (edge_file,) = r2.files
        assert r2.answer == f"Result saved as {edge_file}"
        assert r2.tool_calls[0].output == edge_file and NAME_RE.fullmatch(edge_file)
        assert Image.open(ws.resolve(edge_file)).getpixel((0, 0)) == (175, 175, 175)  # 255 - L(220, 20, 20)
        assert f"Observation: {edge_file}\n" in gen.calls[3][0]

        r3 = agent.send("t1", "Thanks!")
        assert r3.answer == "You're welcome." and r3.tool_calls == [] and r3.files == []
        # Guided decoding offers file parameters exactly the thread's workspace files at each call:
        # the attachment, then also the edge map the tool wrote (WorkspaceFilesMiddleware).
        assert [c[2].guide.files for c in gen.calls] == [(name,)] * 3 + [tuple(sorted([name, edge_file]))] * 2
        # GPT4Tools history policy: the last exchange is in the prompt.
        assert f"Human: Detect the edges of {name}\nAI: Result saved as {edge_file}" in gen.calls[4][0]

        history = agent.history("t1")
        assert [m.type for m in history] == ["human", "ai", "tool", "ai"] * 2 + ["human", "ai"]
        assert_consistent(history)
        assert sorted(ws.files()) == sorted([name, edge_file])
        assert [t.thread_id for t in agent.threads()] == ["t1"]
    assert gen.remaining == 0


def test_plain_invoke_style_still_works(tmp_path):
    gen = ScriptedGenerator(["hi there"])  # no tools bound: plain chat, no ReAct format
    agent = _agent(gen, tmp_path, tools=[], memory="memory")
    out = agent.invoke({"messages": [("user", "hello")]}, {"configurable": {"thread_id": "x"}})
    assert out["messages"][-1].content == "hi there"
    assert agent.graph.get_state({"configurable": {"thread_id": "x"}}).values["messages"][0].content == "hello"


def test_tool_exception_becomes_error_observation(tmp_path, plugin):
    img = make_image(tmp_path / "p.png")
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Answer Question About The Image", f"{announced(p)}, how many cats?"),
        lambda p, m, s: answer(f"The tool failed: {last_observation(p)}"),
    ])
    agent = _agent(gen, tmp_path)
    r = agent.send("t", "How many cats?", [img])
    (call,) = r.tool_calls
    assert call.status == "error"
    assert call.output == "Error: RuntimeError: detector exploded on 'how many cats?'"
    assert "Observation: Error: RuntimeError: detector exploded" in gen.calls[1][0]
    assert r.answer.startswith("The tool failed: Error: RuntimeError")
    assert_consistent(agent.history("t"))


def test_step_limit_ends_runaway_loop(tmp_path, plugin):
    img = make_image(tmp_path / "p.png")
    gen = ScriptedGenerator([lambda p, m, s: tool_step("Get Photo Description", announced(p))], repeat_last=True)
    agent = _agent(gen, tmp_path, max_steps=3)
    r = agent.send("t", "describe forever", [img])
    assert r.stop_reason == "step_limit"
    assert r.answer == step_limit_message(3) and "step limit" in r.answer
    assert len(r.tool_calls) == 3 and all(c.status == "success" for c in r.tool_calls)
    assert len(gen.calls) == 3
    assert_consistent(agent.history("t"))
    # The next turn starts with a fresh step budget.
    gen.repeat_last = False
    gen.push(answer("ok"))
    assert agent.send("t", "stop").answer == "ok"


@pytest.mark.parametrize(
    "bad_step,error",
    [
        ("Thought: Do I need to use a tool? Yes\nAction: Frobnicate The Image\nAction Input: x.png",
         "unknown tool 'Frobnicate The Image'"),
        ("Thought: Do I need to use a tool? Yes\nAction: Get Photo Description",
         "'Action: Get Photo Description' is not followed by an 'Action Input:' line"),
        ("Thought: Do I need to use a tool? Yes", "the model decided to use a tool but named no 'Action:'"),
    ],
)
def test_invalid_step_gets_an_error_observation_and_a_retry(tmp_path, plugin, bad_step, error):
    # create_agent alone ends a run on a message without tool_calls: an unknown tool name would end
    # the turn with an empty answer. The agent answers it with an error observation instead.
    gen = ScriptedGenerator([bad_step, lambda p, m, s: answer(f"Sorry: {last_observation(p)}")])
    agent = _agent(gen, tmp_path)
    r = agent.send("t", "describe it", [make_image(tmp_path / "p.png")])
    assert len(gen.calls) == 2
    retry_prompt = gen.calls[1][0]
    assert f"{bad_step}\nObservation: Error: {error}" in retry_prompt  # the model reads its own step + error
    assert r.answer.startswith(f"Sorry: Error: {error}")
    assert r.stop_reason == "answer"
    (call,) = r.tool_calls
    assert call.status == "invalid" and call.output.startswith(f"Error: {error}")
    assert_consistent(agent.history("t"))
    # The next turn starts clean: earlier invalid steps are not part of its scratchpad.
    gen.push(answer("fine"))
    assert agent.send("t", "thanks").answer == "fine"
    assert "Observation: Error:" not in gen.calls[2][0]


def test_persistently_invalid_model_ends_with_an_answer_naming_the_error(tmp_path, plugin):
    bad = "Thought: Do I need to use a tool? Yes\nAction: Frobnicate\nAction Input: x"
    gen = ScriptedGenerator([bad], repeat_last=True)
    agent = _agent(gen, tmp_path, invalid_retries=1)
    r = agent.send("t", "go", [make_image(tmp_path / "p.png")])
    assert len(gen.calls) == 2  # the first try + one retry
    assert r.stop_reason == "invalid_output"
    assert r.answer and "unknown tool 'Frobnicate'" in r.answer
    assert [c.status for c in r.tool_calls] == ["invalid", "invalid"]
    assert_consistent(agent.history("t"))
    # Streaming (the CLI path) shows the errors and the closing answer too.
    gen.calls.clear()
    events = list(agent.stream_turn("t", "again"))
    assert [e.status for e in events if e.kind == "tool_result"] == ["error", "error"]
    assert [(e.kind, e.name, e.status) for e in events if e.kind == "tool_call"] == [
        ("tool_call", "Frobnicate", "invalid")] * 2
    assert "unknown tool 'Frobnicate'" in "".join(e.text for e in events if e.kind == "token")
    kinds = [e.kind for e in events]  # the closing answer comes after the error observations
    assert kinds.index("token") > max(i for i, k in enumerate(kinds) if k == "tool_result")
    assert events[-1].result.stop_reason == "invalid_output"


def test_invalid_retries_zero_still_never_answers_empty(tmp_path, plugin):
    gen = ScriptedGenerator(["Thought: Do I need to use a tool? Yes"])
    r = _agent(gen, tmp_path, invalid_retries=0).send("t", "go")
    assert len(gen.calls) == 1 and r.stop_reason == "invalid_output"
    assert "named no 'Action:'" in r.answer


@pytest.mark.parametrize(
    "bad,expected",
    [
        ("../../outside.png", "Error: path escapes the workspace: ../../outside.png"),
        ("{abs}", "Error: absolute paths are not allowed: {abs}"),
        ("image/abcd1234.png", "Error: file not found: image/abcd1234.png; known files: {name}"),
        ("image/link.png", "Error: path leads outside the workspace: image/link.png"),
    ],
)
def test_path_escapes_and_unknown_files_are_error_observations(tmp_path, plugin, bad, expected):
    secret = tmp_path / "outside.png"
    make_image(secret, (64, 64), (0, 0, 255))
    img = make_image(tmp_path / "mine.png")
    bad = bad.replace("{abs}", str(secret))
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Edge Detection On Image", bad),
        lambda p, m, s: answer(last_observation(p)),
    ])
    agent = _agent(gen, tmp_path)
    ws = agent.workspace.thread("t")
    stored = ws.save(img)
    (ws.root / "image" / "link.png").symlink_to(secret)
    outside_before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if "ws" not in p.parts}
    files_before = ws.files()

    r = agent.send("t", "edges please")
    (call,) = r.tool_calls
    assert call.status == "error"
    assert call.output.startswith(expected.replace("{abs}", str(secret)).replace("{name}", stored.name))
    assert r.answer == call.output  # the model read the error as its observation
    assert plugin.CALLS == []  # the tool never ran
    # Nothing was written outside the workspace (the sqlite memory and its per-thread turn locks in
    # mem.sqlite.locks/ are the only files that changed), and nothing new inside it either.
    outside_after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")
                     if "ws" not in p.parts and "mem.sqlite.locks" not in p.parts}
    changed = {p.name for p in outside_after if outside_before.get(p) != outside_after[p]}
    assert changed <= {"mem.sqlite", "mem.sqlite-wal", "mem.sqlite-shm"}
    assert ws.files() == files_before
    assert Image.open(secret).getpixel((0, 0)) == (0, 0, 255)


def test_two_threads_concurrently_are_isolated(tmp_path, plugin):
    def model(p, m, s):
        if "Observation:" in p.split("New input:")[-1]:
            return answer(f"{announced(p)} shows {last_observation(p)}")
        return tool_step("Get Photo Description", announced(p))

    gen = ScriptedGenerator([model], repeat_last=True)
    agent = _agent(gen, tmp_path)
    colors = {"red": (250, 0, 0), "blue": (0, 0, 250)}
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(thread_id, color):
        try:
            img = make_image(tmp_path / f"{color}.png", color=colors[color])
            r = agent.send(thread_id, "what is this?", [img])
            name = r.attachments[0]
            out = [r]
            for i in range(2):
                out.append(agent.send(thread_id, f"look at {name} again ({i})"))
            results[thread_id] = out
        except BaseException as exc:  # surface failures from the worker thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(f"thread-{c}", c)) for c in colors]
    [w.start() for w in workers]
    [w.join(60) for w in workers]
    assert not errors, errors
    for color in colors:
        thread_id = f"thread-{color}"
        turns = results[thread_id]
        name = turns[0].attachments[0]
        for r in turns:
            assert r.answer == f"{name} shows a {color} picture of 512x384 pixels"
        history = agent.history(thread_id)
        assert len(history) == 12
        assert_consistent(history)
        other = [c for c in colors if c != color][0]
        text = " ".join(str(m.content) for m in history)
        assert other not in text and results[f"thread-{other}"][0].attachments[0] not in text
        assert agent.workspace.thread(thread_id).files() == [name]
    assert {t.thread_id for t in agent.threads()} == {"thread-red", "thread-blue"}


def test_delete_thread_removes_messages_and_files(tmp_path, plugin):
    gen = ScriptedGenerator([answer("a"), answer("b")])
    agent = _agent(gen, tmp_path)
    agent.send("gone", "hi", [make_image(tmp_path / "x.png")])
    agent.send("kept", "hi")
    folder = agent.workspace.thread("gone").root
    assert folder.is_dir()
    agent.delete_thread("gone")
    assert agent.history("gone") == [] and not folder.exists()
    assert [t.thread_id for t in agent.threads()] == ["kept"]


def test_user_tools_by_function_and_names(tmp_path, plugin):
    def shout(text: str) -> str:
        """Repeat the text in capitals."""
        return text.upper()

    gen = ScriptedGenerator([tool_step("shout", "hello"), lambda p, m, s: answer(last_observation(p))])
    agent = _agent(gen, tmp_path, tools=[shout, "word_count"])
    assert [t.name for t in agent.tools] == ["shout", "word_count"]
    assert agent.send("t", "shout hello").answer == "HELLO"


def test_heavy_tool_model_comes_from_the_pool(tmp_path):
    loads = []

    class Captioner:
        size_bytes = 10

        def __call__(self, path):
            return "a caption"

    def load(device):
        loads.append(device)
        return Captioner()

    tool = gpt4tools_tool("Get Photo Description", lambda model, image_path: model(image_path), model_key="blip")
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Get Photo Description", announced(p)),
        lambda p, m, s: answer(last_observation(p)),
    ] * 2)
    agent = _agent(gen, tmp_path, tools=[tool], device="cpu", model_budget="1MiB")
    agent.pool.register("blip", load)
    assert loads == []  # nothing loads before the tool runs
    for _ in range(2):
        assert agent.send("t", "caption", [make_image(tmp_path / "x.png")]).answer == "a caption"
    assert loads == ["cpu"] and agent.pool.loaded() == ["blip"]


def test_caption_expert_and_other_modalities_are_announced(tmp_path):
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "beep.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    np.save(tmp_path / "chair.npy", np.random.default_rng(0).normal(size=(50, 3)))
    seen = []

    def describe(stored):
        seen.append((stored.name, stored.modality))
        return "a red square" if stored.modality == "image" else None

    def noop(text: str) -> str:
        """Do nothing."""
        return text

    gen = ScriptedGenerator([answer("fine")])
    agent = _agent(gen, tmp_path, tools=[noop], describe=describe)
    r = agent.send("t", "what do you get?", [make_image(tmp_path / "i.png"), wav, (tmp_path / "chair.npy", "point")])
    img, audio, cloud = r.attachments
    assert audio.startswith("audio/") and audio.endswith(".wav") and cloud.startswith("pointcloud/")
    assert seen == [(img, "image"), (audio, "audio"), (cloud, "point")]
    prompt, media, _ = gen.calls[0]
    assert [(m.modality, m.name) for m in media] == [("image", img), ("audio", audio), ("point", cloud)]
    assert (f"Provide an image named {img}. Description: a red square. Understand the image using tools."
            in prompt)
    assert f"named {audio}. Description: An audio clip provided by the user." in prompt
    assert f"named {cloud}. Description: A point cloud provided by the user." in prompt
    assert all(str(m.source).startswith(str(agent.workspace.thread("t").root)) for m in media)


def test_stream_turn_streams_answer_tokens_and_tool_events(tmp_path, plugin):
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Get Photo Description", announced(p)),
        lambda p, m, s: answer(f"It shows {last_observation(p)}."),
    ], chunk_size=4)
    agent = _agent(gen, tmp_path)
    events = list(agent.stream_turn("s", "what is it?", [make_image(tmp_path / "x.png")]))
    kinds = [e.kind for e in events]
    assert kinds[0] == "tool_call" and kinds[1] == "tool_result" and kinds[-1] == "done"
    tokens = [e.text for e in events if e.kind == "token"]
    assert len(tokens) > 3  # the answer arrived piece by piece, not as one final message
    assert "".join(tokens) == events[-1].result.answer == "It shows a red picture of 512x384 pixels."
    assert events[0].name == "Get Photo Description" and events[1].status == "success"


def test_tiny_model_end_to_end(tmp_path):
    """The real model path (random tiny ImageBind-LLM): GPT4Tools prompt, image, checkpointed turn."""

    def noop(text: str) -> str:
        """Return the text unchanged."""
        return text

    agent = _agent("tiny", tmp_path, tools=[noop], max_steps=1)  # one generation at most
    r = agent.send("t", "What is in the image?", [make_image(tmp_path / "x.png")])
    assert isinstance(r.answer, str) and r.stop_reason in ("answer", "step_limit")
    history = agent.history("t")
    assert history[0].type == "human" and history[-1].type == "ai"
    assert_consistent(history)


def test_absolute_output_paths_are_reported_as_workspace_names(tmp_path):
    from ibllm_agent.agent import current_context

    def grayscale(image_path: str) -> str:
        """Make a grayscale copy of an image."""
        name, path = current_context().workspace.new_file("image")
        Image.open(image_path).convert("L").save(path, "PNG")
        return f"Result saved as {path}"  # a careless tool answers with the absolute path

    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("grayscale", announced(p)),
        lambda p, m, s: answer(last_observation(p)),
    ])
    agent = _agent(gen, tmp_path, tools=[grayscale])
    r = agent.send("t", "gray please", [make_image(tmp_path / "c.png")])
    (new,) = r.files
    assert r.tool_calls[0].output == f"Result saved as {new}" and str(tmp_path) not in gen.calls[1][0]


def test_async_send(tmp_path, plugin):
    import asyncio

    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Get Photo Description", announced(p)),
        lambda p, m, s: answer(last_observation(p)),
        answer("async graph"),
    ])
    agent = _agent(gen, tmp_path)
    r = asyncio.run(agent.asend("a", "what?", [make_image(tmp_path / "x.png", color=(0, 0, 250))]))
    assert r.answer == "a blue picture of 512x384 pixels" and r.tool_calls[0].status == "success"
    assert_consistent(agent.history("a"))
    out = asyncio.run(agent.ainvoke({"messages": [("user", "plain graph, async")]}, agent.config("a2")))
    assert out["messages"][-1].content == "async graph"


def test_tool_models_share_a_budget_and_swap_lru(tmp_path):
    events = []

    def loader(key):
        def load(device):
            events.append(("load", key, device))
            return key

        return load

    tools = [
        gpt4tools_tool("Get Photo Description", lambda model, image_path: f"{model} ran",
                       model_key="blip", loader=loader("blip"), size_bytes="600MiB"),
        gpt4tools_tool("Predict Depth On Image", lambda model, image_path: f"{model} ran",
                       model_key="dpt", loader=loader("dpt"), size_bytes="600MiB"),
    ]
    steps = []
    for tool_name in ["Get Photo Description", "Predict Depth On Image", "Get Photo Description"]:
        steps += [lambda p, m, s, t=tool_name: tool_step(t, announced(p)), lambda p, m, s: answer(last_observation(p))]
    gen = ScriptedGenerator(steps)
    # A ready-made pool: its device name is only passed to the loaders (build_agent's own device=
    # is checked against the machine, and this one has no cuda:7).
    from ibllm_agent.agent.models import ModelPool

    agent = _agent(gen, tmp_path, tools=tools, pool=ModelPool(device="cuda:7", budget="1GiB"))  # only one fits
    img = make_image(tmp_path / "x.png")
    answers = [agent.send("t", "go", [img]).answer for _ in range(3)]
    assert answers == ["blip ran", "dpt ran", "blip ran"]
    # Lazy, on the chosen devices, and the least recently used model made room for the next one.
    assert events == [("load", "blip", "cuda:7"), ("load", "dpt", "cuda:7"), ("load", "blip", "cuda:7")]
    assert agent.pool.events == [
        ("load", "blip"), ("unload", "blip"), ("load", "dpt"), ("unload", "dpt"), ("load", "blip"),
    ]


def test_caption_expert_object_describes_its_modalities(tmp_path):
    from ibllm_agent.experts import FunctionExpert

    seen = []

    def caption(media):
        seen.append((media.modality, media.name))
        return "A small red square"

    expert = FunctionExpert("caption", ("image",), caption)

    def noop(text: str) -> str:
        """Do nothing."""
        return text

    gen = ScriptedGenerator([answer("ok")])
    agent = _agent(gen, tmp_path, tools=[noop], describe=expert)
    r = agent.send("t", "hi", [make_image(tmp_path / "a.png")])
    (name,) = r.attachments
    assert seen == [("image", name)]
    assert f"Provide an image named {name}. Description: A small red square. Understand" in gen.calls[0][0]
