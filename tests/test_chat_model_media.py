"""Media in messages: every block form for every modality reaches the model as the right ``Media``,
``ibllm_agent.media.load`` turns it into the encoder's tensor, and the tiny model encodes it."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage

from ibllm_agent.chat import ChatImageBindLLM
from ibllm_agent.content import ContentPolicy
from ibllm_agent.errors import ContentBlockError
from ibllm_agent.testing import ScriptedGenerator

# modality -> (block type, mime type, file name)
KINDS = {
    "image": ("image", "image/png", "photo.png"),
    "audio": ("audio", "audio/wav", "sound.wav"),
    "video": ("video", "video/mp4", "clip.mp4"),
    "point": ("file", "model/ply", "chair.ply"),
    "depth": ("file", "image/x-depth", "depth.png"),
    "thermal": ("file", "image/x-thermal", "heat.png"),
    "imu": ("file", "application/x-imu", "motion.npy"),
}
SHAPES = {
    "image": (3, 224, 224),
    "audio": (3, 1, 128, 204),
    "video": (15, 3, 2, 224, 224),
    "point": (8192, 3),
    "depth": (1, 224, 224),
    "thermal": (1, 224, 224),
    "imu": (6, 2000),
}
FORMS = ["base64", "data_uri", "path", "file_url", "http", "file_id"]


def _write_samples(folder: Path) -> dict[str, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {m: folder / name for m, (_, _, name) in KINDS.items()}
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(paths["image"])
    import soundfile

    t = np.arange(8000) / 16000
    soundfile.write(paths["audio"], (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    import av

    with av.open(str(paths["video"]), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    pts = rng.normal(size=(64, 3)).astype(np.float32)
    header = "ply\nformat ascii 1.0\nelement vertex 64\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    paths["point"].write_text(header + "\n".join(" ".join(f"{v:.4f}" for v in p) for p in pts) + "\n")
    Image.fromarray(rng.integers(500, 4000, (32, 32)).astype(np.uint16)).save(paths["depth"])
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L").save(paths["thermal"])
    np.save(paths["imu"], rng.normal(size=(6, 500)).astype(np.float32))
    return paths


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return _write_samples(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def http_base(samples):
    folder = next(iter(samples.values())).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _block(modality: str, form: str, path: Path, http_base: str) -> dict:
    kind, mime, name = KINDS[modality]
    data = path.read_bytes()
    b64 = base64.b64encode(data).decode()
    block: dict = {"type": kind}
    if form == "base64":
        block.update(base64=b64, mime_type=mime)
    elif form == "data_uri":
        block.update(url=f"data:{mime};base64,{b64}")
    elif form == "path":
        block.update(url=str(path), mime_type=mime)
    elif form == "file_url":
        block.update(url=path.as_uri(), mime_type=mime)
    elif form == "http":
        block.update(url=f"{http_base}/{name}", mime_type=mime)
    elif form == "file_id":
        block.update(file_id=f"id-{name}", mime_type=mime)
    return block


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("modality", list(KINDS))
def test_every_block_form_reaches_the_generator(modality, form, samples, http_base):
    path = samples[modality]
    resolver = {f"id-{p.name}": p.read_bytes() for p in samples.values()}.get
    gen = ScriptedGenerator(["ok"])
    # the test server is on 127.0.0.1: a private address the default policy refuses
    policy = ContentPolicy.library(allow_private_network=True)
    chat = ChatImageBindLLM(model=gen, file_resolver=resolver, modality_weights={modality: 0.5}, content_policy=policy)
    chat.invoke([HumanMessage(content=[{"type": "text", "text": "what is this?"}, _block(modality, form, path, http_base)])])
    [(prompt, media, _)] = gen.calls
    assert prompt == "what is this?"
    [item] = media
    assert item.modality == modality and item.weight == 0.5
    if form in ("path", "file_url"):
        assert Path(item.source) == path
    else:
        assert item.source == path.read_bytes()


@pytest.mark.parametrize("form", ["path", "file_url", "http"])
def test_server_content_policy_refuses_local_and_private_sources(form, samples, http_base):
    gen = ScriptedGenerator(["ok"])
    chat = ChatImageBindLLM(model=gen, content_policy=ContentPolicy.server())
    block = _block("image", form, samples["image"], http_base)
    with pytest.raises(ContentBlockError, match="not allowed"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "what is this?"}, block])])
    assert gen.calls == []
    # the default (library) policy still reads local files
    if form != "http":
        ChatImageBindLLM(model=gen).invoke([HumanMessage(content=[block])])
        assert Path(gen.calls[0][1][0].source) == samples["image"]


def test_fetch_limits_live_in_the_content_policy():
    from ibllm_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="content_policy=ContentPolicy"):
        ChatImageBindLLM(model=ScriptedGenerator(["ok"]), fetch_timeout=5)
    chat = ChatImageBindLLM(model=ScriptedGenerator(["ok"]), content_policy=ContentPolicy(fetch_timeout=5))
    assert chat.content_policy.fetch_timeout == 5 and chat.content_policy.allow_local_files


@pytest.mark.parametrize("modality", list(KINDS))
def test_media_load_gives_the_encoder_shape(modality, samples):
    media_mod = pytest.importorskip("ibllm_agent.media")
    gen = ScriptedGenerator(["ok", "ok"])
    chat = ChatImageBindLLM(model=gen)
    path = samples[modality]
    for form in ("path", "base64"):
        chat.invoke([HumanMessage(content=[_block(modality, form, path, "")])])
    for _, [item], _ in gen.calls:
        tensor = media_mod.load(item.source, item.modality)
        assert tuple(tensor.shape) == SHAPES[modality], (modality, type(item.source))


def test_media_of_the_latest_turn_are_kept_for_follow_ups(samples):
    gen = ScriptedGenerator(["a", "b"])
    chat = ChatImageBindLLM(model=gen)
    first = HumanMessage(content=[{"type": "text", "text": "look"}, _block("image", "path", samples["image"], "")])
    chat.invoke([first])
    from langchain_core.messages import AIMessage

    chat.invoke([first, AIMessage("a"), HumanMessage("and the colour?")])
    assert [m.source for m in gen.calls[1][1]] == [samples["image"]]


def test_tiny_model_encodes_attached_media(samples, monkeypatch):
    """The real tiny ImageBind-LLM: image, audio and point cloud blocks reach its encoder as tensors of
    the right shape, fused with the per-call weights."""
    chat = ChatImageBindLLM(preset="tiny", max_new_tokens=4, temperature=0.0)
    seen = []
    original = type(chat.model.media).encode_tensor

    def spy(self, modality, x):
        seen.append((modality, tuple(x.shape)))
        return original(self, modality, x)

    monkeypatch.setattr(type(chat.model.media), "encode_tensor", spy)
    msg = chat.invoke(
        [HumanMessage(content=[
            {"type": "text", "text": "What is this?"},
            _block("image", "base64", samples["image"], ""),
            _block("audio", "path", samples["audio"], ""),
            _block("point", "data_uri", samples["point"], ""),
        ])],
        modality_weights={"audio": 0.5},
    )
    assert isinstance(msg.content, str) and msg.usage_metadata["output_tokens"] > 0
    got = {m: s[-len(SHAPES[m]):] for m, s in seen}
    assert got == {"image": SHAPES["image"], "audio": SHAPES["audio"], "point": SHAPES["point"]}


def test_a_vanished_earlier_attachment_does_not_break_the_thread(tmp_path, samples):
    from langchain_core.messages import AIMessage

    gone = tmp_path / "gone.png"
    gone.write_bytes(samples["image"].read_bytes())
    first = HumanMessage(content=[{"type": "text", "text": "look"}, {"type": "image", "url": str(gone)}])
    gone.unlink()
    gen = ScriptedGenerator(["b"])
    msg = ChatImageBindLLM(model=gen).invoke([first, AIMessage("a"), HumanMessage("again?")])
    assert msg.content == "b" and gen.calls[0][1] == []
    # ... while a missing file in the current message is the caller's error
    from ibllm_agent.errors import ContentBlockError

    with pytest.raises(ContentBlockError, match="no such file"):
        ChatImageBindLLM(model=ScriptedGenerator(["x"])).invoke([first])
