"""The OpenAI-compatible API, driven over HTTP on 127.0.0.1 with the official ``openai`` client."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from serve_utils import SlowGenerator, client, data_uri, png_bytes, running_server

from ibllm_agent.serve import ServeConfig, create_app
from ibllm_agent.testing import ScriptedGenerator

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def make(gen, **config):
    config.setdefault("model_id", "m")
    config.setdefault("memory_url", "memory")
    return create_app(gen, ServeConfig(**config))


def test_models_health_and_plain_chat():
    gen = ScriptedGenerator(["hello there, friend"])
    with running_server(make(gen)) as server:
        c = client(server)
        assert [m.id for m in c.models.list().data] == ["m"]
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
        r = c.chat.completions.create(model="m", messages=[{"role": "system", "content": "Be kind."},
                                                           {"role": "user", "content": "Say hi to Bob"}],
                                      max_tokens=20, temperature=0)
    assert r.choices[0].message.content == "hello there, friend"
    assert r.choices[0].finish_reason == "stop"
    # Usage counts are the generator's: prompt pieces and the 3 words of the answer.
    assert r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens == len(gen.prompts[0].split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + 3
    prompt, media, sampling = gen.calls[0]
    assert "Say hi to Bob" in prompt and "Be kind." in prompt and media == []
    assert sampling.temperature == 0 and sampling.max_new_tokens == 20


def test_streaming_joins_to_the_answer_and_ends_with_done():
    gen = ScriptedGenerator(["a long streamed answer"] * 2, chunk_size=4)
    with running_server(make(gen)) as server:
        chunks = list(client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "go"}], stream=True,
            stream_options={"include_usage": True}))
        raw = httpx.post(f"{server.base_url}/v1/chat/completions",
                         json={"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True})
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "a long streamed answer"
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) > 3  # really streamed
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_image_message_reaches_the_model_as_media():
    gen = ScriptedGenerator(["a red square"])
    image = png_bytes((40, 30))
    with running_server(make(gen)) as server:
        r = client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
        ]}], extra_body={"modality_weights": {"image": 0.5}})
    assert r.choices[0].message.content == "a red square"
    _, media, _ = gen.calls[0]
    assert len(media) == 1 and media[0].modality == "image" and media[0].source == image
    assert media[0].weight == 0.5


def test_audio_and_point_cloud_parts():
    gen = ScriptedGenerator(["ok"])
    ply = b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n"
    with running_server(make(gen)) as server:
        client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "input_audio", "input_audio": {"data": data_uri(b"RIFF0000WAVE").split(",", 1)[1], "format": "wav"}},
            {"type": "file", "file": {"file_data": data_uri(ply, "application/octet-stream"), "filename": "chair.ply"}},
        ]}])
    _, media, _ = gen.calls[0]
    assert [m.modality for m in media] == ["audio", "point"]
    assert media[1].source == ply


class _PngHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = png_bytes((8, 8))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_image_url():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PngHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
    httpd.shutdown()
    httpd.server_close()


def test_server_refuses_private_urls_and_local_files(local_image_url):
    gen = ScriptedGenerator(["never"])
    with running_server(make(gen)) as server:
        c = client(server)
        for url in (local_image_url, "file:///etc/passwd", "/etc/passwd", "http://169.254.169.254/latest"):
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}]}])
            assert "non-public address" in str(err.value) or "not allowed" in str(err.value)
    assert gen.calls == []


def test_url_fetch_when_private_network_is_allowed(local_image_url):
    from ibllm_agent.serve.safety import RemotePolicy

    gen = ScriptedGenerator(["a cat"])
    with running_server(make(gen, remote=RemotePolicy(allow_private_network=True))) as server:
        client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": local_image_url}}]}])
    assert gen.calls[0][1][0].source == png_bytes((8, 8))


def test_tool_round_trip():
    gen = ScriptedGenerator([
        "Thought: Do I need to use a tool? Yes\nAction: get_weather\nAction Input: Paris\n",
        "Thought: Do I need to use a tool? No\nAI: It is 18 degrees in Paris.",
    ])
    with running_server(make(gen)) as server:
        c = client(server)
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = c.chat.completions.create(model="m", messages=messages, tools=[WEATHER], tool_choice="auto")
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
        second = c.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It is 18 degrees in Paris."
    assert "get_weather" in gen.prompts[0]
    assert "Observation: 18 degrees, sunny" in gen.prompts[1]  # the tool result went back to the model


def test_bearer_auth():
    gen = ScriptedGenerator(["ok"], repeat_last=True)
    with running_server(make(gen, api_keys=("sekrit",))) as server:
        with pytest.raises(openai.AuthenticationError):
            client(server, key="wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            client(server, key="wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert httpx.post(f"{server.base_url}/v1/chat/completions", json={}).status_code == 401
        assert httpx.get(f"{server.base_url}/health").status_code == 200  # probes need no key
        r = client(server, key="sekrit").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "ok"
    assert len(gen.calls) == 1


def test_oversize_body_is_413():
    gen = ScriptedGenerator(["never"])
    with running_server(make(gen, max_body_bytes=2000)) as server:
        big = data_uri(b"\0" * 5000)
        with pytest.raises(openai.APIStatusError) as err:
            client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": big}}]}])
        assert err.value.status_code == 413
        # A chunked body (no Content-Length) is cut off as soon as it passes the limit.
        chunks = (b"x" * 500 for _ in range(10))
        r = httpx.post(f"{server.base_url}/v1/chat/completions", content=chunks)
    assert r.status_code == 413 and "limit of 2000 bytes" in r.json()["error"]["message"]
    assert gen.calls == []


def test_bad_requests_are_400_or_404():
    gen = ScriptedGenerator(["never"])
    with running_server(make(gen)) as server:
        c = client(server)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="unsupported content part"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": [{"type": "pdf"}]}])
        with pytest.raises(openai.BadRequestError, match="n must be 1"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=2)
    assert gen.calls == []


def test_full_queue_answers_429_then_recovers():
    gate = threading.Event()
    gen = SlowGenerator(pieces=2, delay=0, gate=gate)
    with running_server(make(gen, max_queue=1, max_concurrent=4)) as server:
        c = client(server)
        results = []
        threads = [threading.Thread(target=lambda: results.append(c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]))) for _ in range(2)]
        threads[0].start()
        assert gen.started.wait(10)  # first request is decoding (held at the gate)
        threads[1].start()
        deadline = time.monotonic() + 10
        while server.config.app.state.ibllm.scheduler.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        gate.set()
        for t in threads:
            t.join(20)
    assert [r.choices[0].message.content for r in results] == ["w0 w1", "w0 w1"]


def test_client_disconnect_mid_stream_stops_generation():
    gen = SlowGenerator(pieces=400, delay=0.02)
    with running_server(make(gen)) as server:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=30, json={
                "model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 400}) as r:
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {") and '"delta": {"content": "' in line and '"content": ""' not in line:
                    seen += 1
                    if seen == 3:
                        break
        # The connection is closed; the generation must stop well before its 400 pieces.
        deadline = time.monotonic() + 5
        health = {}
        while time.monotonic() < deadline:
            health = httpx.get(f"{server.base_url}/health").json()
            if health["cancelled"] >= 1 and health["busy"] == 0:
                break
            time.sleep(0.05)
        produced = gen.produced
        time.sleep(0.3)
        assert gen.produced == produced  # nothing more is generated
    assert produced < 100, (produced, health)
    assert health["cancelled"] >= 1, health


def test_graceful_shutdown_finishes_in_flight_stream():
    gen = SlowGenerator(pieces=30, delay=0.02)
    with running_server(make(gen)) as server:
        c = client(server)
        stream = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                                           max_tokens=30)
        first = next(iter(stream))
        server.should_exit = True  # what SIGTERM/SIGINT do
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/health", timeout=2)
    assert first.choices[0].delta.role == "assistant"
    assert text.split() == [f"w{i}" for i in range(30)]


def test_invalid_step_and_length_finish():
    gen = ScriptedGenerator([
        "Thought: Do I need to use a tool? Yes\nAction: Teleport\nAction Input: Mars\n",
        "one two three four",
    ])
    with running_server(make(gen)) as server:
        c = client(server)
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], tools=[WEATHER])
        cut = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "count"}], max_tokens=2)
    message = r.choices[0].message
    assert message.tool_calls is None and r.choices[0].finish_reason == "stop"
    (invalid,) = message.model_extra["invalid_tool_calls"]  # extension: the step the model got wrong
    assert invalid["name"] == "Teleport" and "unknown tool" in invalid["error"]
    assert cut.choices[0].message.content == "one two" and cut.choices[0].finish_reason == "length"


def test_client_disconnect_cancels_a_non_streamed_request():
    gen = SlowGenerator(pieces=400, delay=0.02)
    with running_server(make(gen)) as server:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{server.base_url}/v1/chat/completions", timeout=0.5, json={
                "model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and httpx.get(f"{server.base_url}/health").json()["cancelled"] < 1:
            time.sleep(0.05)
        produced = gen.produced
        time.sleep(0.3)
        assert gen.produced == produced < 100


def test_shutting_down_server_answers_503():
    gen = ScriptedGenerator(["never"])
    app = make(gen)
    with running_server(app) as server:
        app.state.ibllm.closing = True  # what `ibllm-agent serve` sets on SIGTERM/Ctrl-C
        with pytest.raises(openai.InternalServerError) as err:
            client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        health = httpx.get(f"{server.base_url}/health")
    assert err.value.status_code == 503 and "shutting down" in str(err.value)
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    assert gen.calls == []


def test_unreadable_tools_are_400_and_free_their_slot():
    gen = ScriptedGenerator(["fine"])
    with running_server(make(gen, max_concurrent=1)) as server:
        c = client(server)
        with pytest.raises(openai.BadRequestError, match="tool"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                      tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="nope")
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])  # the one slot is free
    assert r.choices[0].message.content == "fine"
