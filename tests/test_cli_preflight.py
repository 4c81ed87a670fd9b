"""`run`/`chat` check arguments, attachments and settings before any model loads (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from ibllm_agent.cli.preflight import check_attachment, parse_weights
from ibllm_agent.errors import ConfigError
from ibllm_agent.media import MediaError


@pytest.fixture
def files(tmp_path):
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 50), 1500, np.uint16)).save(tmp_path / "depth.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.jpg").write_text("this is not a jpeg")
    (tmp_path / "noise.jpg").write_bytes(b"\xff\xfe\x00garbage" * 10)
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).normal(size=(100, 3)).astype("f4"))
    np.save(tmp_path / "imu.npy", np.zeros((6, 300), "f4"))
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    return tmp_path


@pytest.mark.parametrize(("name", "flag", "match"), [
    ("missing.png", "image", "no such file"),
    ("notes.txt", "image", "holds text, not an image"),
    ("fake.jpg", "image", "holds text, not an image"),
    ("noise.jpg", "image", "no format we can read"),
    ("s.wav", "image", "holds audio, not an image"),
    ("a.png", "audio", "holds an image, not audio"),
    ("pts.npy", "imu", "holds a point cloud, not an IMU recording"),
    ("imu.npy", "point", "holds an IMU recording"),
    ("a.png", "depth", "holds an image, not a depth map"),
])
def test_wrong_or_missing_files_are_one_line_media_errors(files, name, flag, match):
    with pytest.raises(MediaError, match=match) as info:
        check_attachment(str(files / name), flag)
    assert str(files / name) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "flag"), [
    ("a.png", "image"), ("depth.png", "depth"), ("a.png", "thermal"), ("s.wav", "audio"),
    ("pts.npy", "point"), ("imu.npy", "imu"),
])
def test_right_files_pass(files, name, flag):
    assert check_attachment(str(files / name), flag).modality == flag


def test_urls_pass_unfetched_and_weights_parse():
    assert check_attachment("https://example.com/cat.jpg", "image").is_url
    with pytest.raises(MediaError, match="no host"):
        check_attachment("https:///cat.jpg", "image")
    assert parse_weights("0.7,0.3", 2) == [0.7, 0.3]
    assert parse_weights(None, 3) == [1.0, 1.0, 1.0]
    for bad in ("0.7", "a,b", "-1,2", "0,0"):
        with pytest.raises(ConfigError):
            parse_weights(bad, 2)


_PROBE = """
import sys, time
start = time.perf_counter()
from ibllm_agent.cli import main
sys.argv = ["ibllm-agent", "run", "hi", "--model", "tiny", "--no-tools", "--memory", "memory", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("ELAPSED", time.perf_counter() - start, "CODE", code, "TORCH", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "{d}/missing.png"], "no such file"),
    (["--image", "{d}/notes.txt"], "holds text, not an image"),
    (["--point", "{d}/a.png"], "holds an image, not a point cloud"),
    (["--image", "{d}/a.png", "--weights", "0.5,0.5"], "--weights has 2 value(s) but there are 1"),
    (["--image", "{d}/a.png", "--cache", "{d}/no-cache"], "visual cache folder"),
    (["--image", "{d}/a.png", "--device", "cuda:99"], "cuda:99"),
])
def test_bad_input_is_reported_before_any_model_loads(files, args, message):
    args = [a.format(d=files) for a in args]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], proc.stderr
    fields = lines[-1].split()
    elapsed, code, torch_loaded = float(fields[1]), fields[3], fields[5]
    assert code == "2"
    # Nothing heavy was imported (the model build alone takes 10-30 s here); the check itself is
    # well under a second even on a loaded machine — the bound leaves room for a busy CI box.
    if "cuda" in message:  # only torch can say which GPUs exist: imported, but no model built
        return
    assert torch_loaded == "False"
    assert elapsed < 5.0


def test_run_json_reports_the_visual_cache_and_fused_inputs(files, tmp_path):
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(["A red picture."]))
    proc = subprocess.run(
        [sys.executable, "-m", "ibllm_agent", "run", "what?", "--image", str(files / "a.png"),
         "--image", str(files / "a.png"), "--weights", "0.7,0.3", "--model", f"scripted:{outputs}",
         "--no-tools", "--memory", "memory", "--workspace", str(tmp_path / "ws"), "--json", "--seed", "3",
         "--system", "Be brief."],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "A red picture." and len(data["attachments"]) == 2
    assert data["visual_cache"]["applied"] is False and "no visual cache" in data["visual_cache"]["reason"]
    assert "note: 2 inputs are fused into one embedding" in proc.stderr and "×0.7" in proc.stderr


def test_generation_controls_and_system_reach_the_model(tmp_path):
    from ibllm_agent.cli.run import generation_options, make_agent

    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(["ok"]))
    agent = make_agent(f"scripted:{outputs}", "memory", tmp_path / "ws", [], True, 8, None, None, None,
                       generation_options(7, 0.0, 0.9, 5), "Answer like a pirate.")
    with agent:
        assert agent.send("t", "hello").answer == "ok"
    prompt, _media, sampling = agent.chat_model.model.calls[0]
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed) == (7, 0.0, 0.9, 5)
    assert "Answer like a pirate." in prompt
    assert generation_options(None, None, None, None) == {}


def test_info_lists_models_and_the_cache_setting(tmp_path):
    from ibllm_agent.cli.info import collect
    from ibllm_agent.config import get_settings

    settings = get_settings(weights_dir=tmp_path / "w", visual_cache=tmp_path / "cache")
    data = collect(settings)
    official = data["models"][0]
    assert official["name"] == "official" and not official["present"]
    assert "pull imagebind-llm-7b" in official["use"]
    assert data["models"][1]["name"] == "demo"  # the shipped model's row
    assert data["settings"]["visual_cache"] == str(tmp_path / "cache")
    mine = tmp_path / "w" / "mine"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text("{}")
    (mine / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "w" / "official").mkdir()
    (tmp_path / "w" / "official" / "config.json").write_text("{}")
    names = {m["name"]: m for m in collect(settings)["models"]}
    assert names["official"]["present"] and names["mine"]["use"] == f"--model {mine}" and "tiny" in names
