"""The agent endpoint: threads with memory, tools and files, in one process and across two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_utils import data_uri, free_port, paint_tool, png_bytes, running_server

from ibllm_agent.serve import ServeConfig, create_app
from ibllm_agent.testing import ScriptedGenerator

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL")  # set by .ci/run (a throwaway PostgreSQL)


def test_turn_with_attachment_tool_file_and_history(tmp_path):
    gen = ScriptedGenerator([
        "Thought: Do I need to use a tool? Yes\nAction: Paint Picture\nAction Input: a blue sea\n",
        "Thought: Do I need to use a tool? No\nAI: Here is your picture.",
    ])
    app = create_app(gen, ServeConfig(model_id="m", memory_url="memory", workspace_dir=tmp_path / "ws",
                                      agent_tools=[paint_tool()], agent_workers=2))
    with running_server(app) as server:
        base = f"{server.base_url}/v1/threads/t1"
        r = httpx.post(f"{base}/messages", timeout=60, json={
            "content": [{"type": "text", "text": "Paint this as a sea"},
                        {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}],
            "temperature": 0.0, "max_tokens": 50, "modality_weights": {"image": 0.7}})
        assert r.status_code == 200, r.text
        result = r.json()
        (file,) = result["files"]
        png = httpx.get(server.base_url + file["url"])
        history = httpx.get(f"{base}/messages").json()["messages"]
        listed = httpx.get(f"{server.base_url}/v1/threads").json()["data"]
        escape = httpx.get(f"{base}/files/..%2F..%2Fsecret.txt")
    assert result["answer"] == "Here is your picture."
    assert [c["name"] for c in result["tool_calls"]] == ["Paint Picture"]
    assert result["tool_calls"][0]["status"] == "success"
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert len(result["attachments"]) == 1 and result["attachments"][0]["name"].startswith("image/")
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[0]["attachments"] == [result["attachments"][0]["name"]]
    assert [t["id"] for t in listed] == ["t1"]
    assert escape.status_code == 404
    # Per-turn settings reached every model call of the turn; the attachment reached the model.
    for _prompt, media, sampling in gen.calls:
        assert sampling.temperature == 0.0 and sampling.max_new_tokens <= 50
        assert [m.modality for m in media] == ["image"] and media[0].weight == 0.7


def test_streamed_turn_events(tmp_path):
    gen = ScriptedGenerator(["streamed words here"], chunk_size=3)  # no tools: plain chat output
    app = create_app(gen, ServeConfig(model_id="m", memory_url="memory", workspace_dir=tmp_path, agent_tools=[]))
    with running_server(app) as server:
        r = httpx.post(f"{server.base_url}/v1/threads/s1/messages", json={"content": "hi", "stream": True}, timeout=60)
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    tokens = "".join(e.get("text", "") for e in events if e["type"] == "token")
    assert tokens.strip() == "streamed words here"
    assert events[-1]["type"] == "done" and events[-1]["result"]["answer"] == "streamed words here"


def _serve(port: int, outputs: list[str], tmp: Path, name: str) -> subprocess.Popen:
    script = tmp / f"{name}.json"
    script.write_text(json.dumps(outputs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ibllm_agent", "serve", "--model", f"scripted:{script}", "--port", str(port),
         "--memory", POSTGRES_URL, "--workspace", str(tmp / "shared-ws"), "--no-tools", "--model-id", "m"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: uvicorn shuts down gracefully (then re-raises the signal, so the code may be -15)."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out, out


@pytest.mark.slow
@pytest.mark.skipif(POSTGRES_URL is None, reason="TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL "
                    "and sets it; locally: export TEST_POSTGRES_URL=$(.ci/postgres.sh))")
def test_two_processes_serve_one_thread_on_postgres(tmp_path):
    """Turns of one thread alternate between two server processes sharing a PostgreSQL checkpointer
    and a workspace root: each process sees everything the other stored."""
    import uuid

    thread = f"pg-{uuid.uuid4().hex[:8]}"
    pa, pb = free_port(), free_port()
    a = _serve(pa, ["first answer",
                    "third answer"], tmp_path, "a")
    try:
        _wait_healthy(a, pa)  # A creates the tables; B then starts against the same database
        b = _serve(pb, ["second answer"], tmp_path, "b")
        try:
            _wait_healthy(b, pb)
            url = {"a": f"http://127.0.0.1:{pa}/v1/threads/{thread}", "b": f"http://127.0.0.1:{pb}/v1/threads/{thread}"}
            r1 = httpx.post(url["a"] + "/messages", timeout=60, json={"content": [
                {"type": "text", "text": "look at this"},
                {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}).json()
            seen_by_b = httpx.get(url["b"] + "/messages").json()["messages"]
            image_via_a = httpx.get(f"http://127.0.0.1:{pa}" + r1["attachments"][0]["url"])
            image_via_b = httpx.get(f"http://127.0.0.1:{pb}" + r1["attachments"][0]["url"])
            r2 = httpx.post(url["b"] + "/messages", json={"content": "and then?"}, timeout=60).json()
            r3 = httpx.post(url["a"] + "/messages", json={"content": "finally"}, timeout=60).json()
            history = httpx.get(url["b"] + "/messages").json()["messages"]
            threads_b = [t["id"] for t in httpx.get(f"http://127.0.0.1:{pb}/v1/threads").json()["data"]]
        finally:
            _stop(b)
    finally:
        _stop(a)
    assert [r1["answer"], r2["answer"], r3["answer"]] == ["first answer", "second answer", "third answer"]
    assert [m["content"] for m in seen_by_b] == ["look at this", "first answer"]
    assert image_via_b.status_code == 200 and image_via_b.content.startswith(b"\x89PNG")
    assert image_via_b.content == image_via_a.content  # one shared workspace
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "look at this"), ("assistant", "first answer"), ("user", "and then?"),
        ("assistant", "second answer"), ("user", "finally"), ("assistant", "third answer")]
    assert thread in threads_b


def test_point_cloud_and_audio_parts_are_stored_with_their_type(tmp_path):
    import base64
    import io

    import numpy as np
    import soundfile as sf

    pts = np.random.default_rng(0).normal(size=(600, 3)).astype("float32")
    ply = ("ply\nformat ascii 1.0\nelement vertex 600\nproperty float x\nproperty float y\nproperty float z\n"
           "end_header\n" + "\n".join(" ".join(f"{v:.4f}" for v in p) for p in pts) + "\n").encode()
    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600, dtype="float32"), 16000, format="WAV")
    gen = ScriptedGenerator(["a blob and silence"])
    app = create_app(gen, ServeConfig(model_id="m", memory_url="memory", workspace_dir=tmp_path, agent_tools=[]))
    with running_server(app) as server:
        r = httpx.post(f"{server.base_url}/v1/threads/p1/messages", timeout=60, json={"content": [
            {"type": "text", "text": "what is this?"},
            {"type": "file", "file": {"file_data": data_uri(ply, "application/octet-stream"), "filename": "blob.ply"},
             "weight": 0.5},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}},
        ]})
    assert r.status_code == 200, r.text
    assert [a["name"].split("/")[0] for a in r.json()["attachments"]] == ["pointcloud", "audio"]
    media = gen.calls[0][1]
    assert sorted(m.modality for m in media) == ["audio", "point"]
    assert {m.modality: m.weight for m in media}["point"] == 0.5
