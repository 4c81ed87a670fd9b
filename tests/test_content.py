"""Content blocks → Media: every source form, modality inference, weights, names, fetch limits."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from ibllm_agent.content import (
    FETCH_CACHE,
    FetchLimits,
    _FetchCache,
    block_modality,
    block_to_media,
    fetch,
    guess_mime,
    message_text,
    split_message,
)
from ibllm_agent.errors import ContentBlockError, FetchError, IbllmError

PAYLOAD = b"\x89PNG\r\n\x1a\n-not-really-a-png"
B64 = base64.b64encode(PAYLOAD).decode()


@pytest.fixture
def server():
    """A loopback HTTP server: /ok (payload), /big (2 KiB), /slow (answers after 2 s), /missing (404)."""

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path == "/slow":
                time.sleep(2.0)
            if self.path == "/missing":
                self.send_error(404)
                return
            if self.path == "/drip":  # 20 bytes, one every 0.1 s: each wait is short, the whole is not
                self.send_response(200)
                self.send_header("Content-Length", "20")
                self.end_headers()
                try:
                    for _ in range(20):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            body = b"x" * 2048 if self.path == "/big" else PAYLOAD
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    FETCH_CACHE.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    FETCH_CACHE.clear()
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_base64_blocks_decode_to_bytes(kind):
    media = block_to_media({"type": kind, "base64": B64, "mime_type": f"{kind}/x"})
    assert media.modality == kind
    assert media.source == PAYLOAD
    assert media.weight == 1.0 and media.name is None


def test_data_uri_and_openai_image_url():
    msg = HumanMessage(
        content=[
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
        ]
    )
    content = split_message(msg)
    assert content.text == "look"
    assert [(m.modality, m.source) for m in content.media] == [("image", PAYLOAD)]
    # non-base64 data URI (percent-encoded)
    assert block_to_media({"type": "file", "url": "data:model/ply,ply%0Aend"}).source == b"ply\nend"
    assert block_to_media({"type": "file", "url": "data:model/ply,ply%0Aend"}).modality == "point"


def test_local_paths_and_file_urls(tmp_path: Path):
    f = tmp_path / "chair.ply"
    f.write_text("ply\n")
    for block in (
        {"type": "file", "url": str(f)},
        {"type": "file", "url": f.as_uri()},
        {"type": "file", "path": str(f)},
    ):
        media = block_to_media(block)
        assert media.modality == "point"
        assert media.source == f
    img = tmp_path / "a.png"
    img.write_bytes(PAYLOAD)
    assert block_to_media({"type": "image", "url": str(img)}).source == img
    with pytest.raises(ContentBlockError, match="no such file"):
        block_to_media({"type": "image", "url": str(tmp_path / "nope.png")})


@pytest.mark.parametrize(
    "block, modality",
    [
        ({"type": "file", "base64": B64, "mime_type": "model/ply"}, "point"),
        ({"type": "file", "base64": B64, "mime_type": "application/x-pcd"}, "point"),
        ({"type": "file", "base64": B64, "mime_type": "application/x-depth+npy"}, "depth"),
        ({"type": "file", "base64": B64, "mime_type": "image/x-thermal"}, "thermal"),
        ({"type": "file", "base64": B64, "mime_type": "application/x-imu"}, "imu"),
        ({"type": "file", "base64": B64, "mime_type": "audio/wav"}, "audio"),
        ({"type": "file", "base64": B64, "mime_type": "application/octet-stream", "extras": {"filename": "scan.pcd"}}, "point"),
        ({"type": "file", "base64": B64, "extras": {"modality": "imu"}}, "imu"),
        ({"type": "image", "base64": B64, "mime_type": "image/png", "extras": {"modality": "depth"}}, "depth"),
        ({"type": "file", "url": "https://example.org/clip.MP4"}, "video"),
    ],
)
def test_modality_inference(block, modality):
    assert block_modality(block) == modality


def test_unknown_modality_is_a_typed_error():
    with pytest.raises(ContentBlockError, match="cannot tell its modality"):
        block_to_media({"type": "file", "base64": B64, "extras": {"filename": "x.npy"}})
    with pytest.raises(ContentBlockError, match="unknown modality 'smell'"):
        block_to_media({"type": "file", "base64": B64, "extras": {"modality": "smell"}})


def test_bad_sources_are_typed_errors():
    with pytest.raises(ContentBlockError, match="invalid base64"):
        block_to_media({"type": "image", "base64": "***", "mime_type": "image/png"})
    with pytest.raises(ContentBlockError, match="unsupported URL scheme 'ftp'"):
        block_to_media({"type": "image", "url": "ftp://host/a.png"})
    with pytest.raises(ContentBlockError, match="no url, base64, path or file_id"):
        block_to_media({"type": "image", "mime_type": "image/png"})
    with pytest.raises(ContentBlockError, match="not a number"):
        block_to_media({"type": "image", "base64": B64, "extras": {"weight": "heavy"}})
    # the message never carries the payload itself
    with pytest.raises(ContentBlockError) as info:
        block_to_media({"type": "image", "base64": "A" * 10_001 + "*"})
    assert "AAAAAAAAAA" not in str(info.value) and "10002 chars" in str(info.value)


def test_file_id_resolver():
    store = {"f1": PAYLOAD}
    media = block_to_media({"type": "audio", "file_id": "f1"}, file_resolver=store.get)
    assert (media.modality, media.source) == ("audio", PAYLOAD)
    with pytest.raises(ContentBlockError, match="unknown file_id 'f2'"):
        block_to_media({"type": "audio", "file_id": "f2"}, file_resolver=store.get)
    with pytest.raises(ContentBlockError, match="no file_resolver"):
        block_to_media({"type": "audio", "file_id": "f1"})

    def failing(file_id):
        raise KeyError(file_id)

    with pytest.raises(ContentBlockError, match="could not be resolved"):
        block_to_media({"type": "audio", "file_id": "f9"}, file_resolver=failing)


def test_weights_names_and_descriptions():
    msg = HumanMessage(
        content=[
            {"type": "image", "base64": B64, "mime_type": "image/png", "extras": {"name": "image/ab12cd34.png", "description": "A dog."}},
            {"type": "audio", "base64": B64, "mime_type": "audio/wav"},
            {"type": "audio", "base64": B64, "mime_type": "audio/wav", "extras": {"weight": 0.25}},
        ]
    )
    content = split_message(msg, modality_weights={"audio": 0.5})
    assert [(m.modality, m.weight, m.name) for m in content.media] == [
        ("image", 1.0, "image/ab12cd34.png"),
        ("audio", 0.5, None),
        ("audio", 0.25, None),
    ]
    assert content.descriptions == ("A dog.", None, None)
    assert content.text == ""


def test_message_text_ignores_media_and_plain_strings():
    assert message_text(HumanMessage("hi")) == "hi"
    msg = HumanMessage(content=[{"type": "text", "text": "a"}, {"type": "image", "base64": B64, "mime_type": "image/png"}, {"type": "text", "text": "b"}])
    assert message_text(msg) == "a\nb"


def test_http_fetch_is_cached_per_url(server):
    base, hits = server
    for _ in range(3):
        media = block_to_media({"type": "image", "url": f"{base}/ok"})
        assert media.source == PAYLOAD and media.modality == "image"
    assert hits == ["/ok"]
    assert fetch(f"{base}/ok", use_cache=False) == PAYLOAD
    assert hits == ["/ok", "/ok"]


def test_fetch_cache_is_bounded():
    cache = _FetchCache(max_items=2, max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # evicts b (least recent)
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("d", b"123456789")  # over 10 bytes in total: evicts until it fits
    assert cache.get("d") and cache.get("a") is None and cache.get("c") is None


def test_http_fetch_limits(server):
    server, _ = server
    with pytest.raises(FetchError, match="over the limit of 1024"):
        block_to_media({"type": "image", "url": f"{server}/big"}, limits=FetchLimits(max_bytes=1024))
    with pytest.raises(FetchError, match="HTTP 404"):
        block_to_media({"type": "image", "url": f"{server}/missing"})
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="no answer within 0.3 s"):
        block_to_media({"type": "image", "url": f"{server}/slow"}, limits=FetchLimits(timeout=0.3))
    assert time.monotonic() - t0 < 1.9
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="not complete within 0.5 s"):
        block_to_media({"type": "image", "url": f"{server}/drip"}, limits=FetchLimits(timeout=0.5))
    assert time.monotonic() - t0 < 1.5
    assert issubclass(FetchError, ContentBlockError) and issubclass(FetchError, IbllmError)


def test_guess_mime():
    assert guess_mime("a.ply") == "model/ply"
    assert guess_mime("a.pcd") == "model/x-pcd"
    assert guess_mime("a.png") == "image/png"
