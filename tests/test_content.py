"""Content blocks → Media: every source form, modality inference, weights, names, the content policy
(local files, private addresses, redirects, DNS names, size and time limits)."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from ibllm_agent import fetch as content_fetch
from ibllm_agent.content import (
    FETCH_CACHE,
    ContentPolicy,
    _FetchCache,
    block_modality,
    block_to_media,
    fetch,
    message_text,
    split_message,
)
from ibllm_agent.errors import ContentBlockError, FetchError, IbllmError
from ibllm_agent.media.formats import guess_mime

LOCAL = ContentPolicy.library(allow_private_network=True)  # the loopback test server is private

PAYLOAD = b"\x89PNG\r\n\x1a\n-not-really-a-png"
B64 = base64.b64encode(PAYLOAD).decode()


@pytest.fixture
def server():
    """A loopback HTTP server: /ok (payload), /big (2 KiB), /slow (answers after 2 s), /missing (404),
    /drip (slow body), /to?url (302 to url), /loop (redirects to itself). ``hits`` records paths,
    ``hosts`` the Host headers."""

    hits: list[str] = []
    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            hosts.append(self.headers.get("Host", ""))
            if self.path.startswith("/to?") or self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", self.path[4:] if self.path.startswith("/to?") else "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
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
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits, hosts
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
    base, hits, _ = server
    for _ in range(3):
        media = block_to_media({"type": "image", "url": f"{base}/ok"}, policy=LOCAL)
        assert media.source == PAYLOAD and media.modality == "image"
    assert hits == ["/ok"]
    assert fetch(f"{base}/ok", LOCAL, use_cache=False) == PAYLOAD
    assert hits == ["/ok", "/ok"]
    # a body fetched while private addresses were allowed never answers a policy that refuses them
    with pytest.raises(FetchError, match="loopback address 127.0.0.1"):
        fetch(f"{base}/ok")
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
    server, _, _ = server

    def policy(**kw):
        return ContentPolicy(allow_private_network=True, **kw)

    with pytest.raises(FetchError, match="over the limit of 1024"):
        block_to_media({"type": "image", "url": f"{server}/big"}, policy=policy(fetch_max_bytes=1024))
    with pytest.raises(FetchError, match="HTTP 404"):
        block_to_media({"type": "image", "url": f"{server}/missing"}, policy=LOCAL)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="no answer within 0.3 s"):
        block_to_media({"type": "image", "url": f"{server}/slow"}, policy=policy(fetch_timeout=0.3))
    assert time.monotonic() - t0 < 1.9
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="not complete within 0.5 s"):
        block_to_media({"type": "image", "url": f"{server}/drip"}, policy=policy(fetch_timeout=0.5))
    assert time.monotonic() - t0 < 1.5
    assert issubclass(FetchError, ContentBlockError) and issubclass(FetchError, IbllmError)


def test_guess_mime():
    assert guess_mime("a.ply") == "model/ply"
    assert guess_mime("a.pcd") == "model/x-pcd"
    assert guess_mime("a.png") == "image/png"
    assert guess_mime("https://example.org/scan.PCD?x=1") == "model/x-pcd"


def test_policy_presets_and_validation():
    assert ContentPolicy() == ContentPolicy.library()
    assert ContentPolicy.library().allow_local_files and not ContentPolicy.server().allow_local_files
    assert not ContentPolicy.library().allow_private_network and not ContentPolicy.server().allow_private_network
    assert (ContentPolicy().fetch_timeout, ContentPolicy().fetch_max_bytes) == (10.0, 64 * 2**20)
    assert ContentPolicy.server(allow_private_network=True).allow_local_files is False
    with pytest.raises(ValueError):
        ContentPolicy(fetch_timeout=0)
    with pytest.raises(ValueError):
        ContentPolicy(fetch_max_byts=1)  # a typo is an error, not a silently ignored limit


def test_server_policy_refuses_local_files_but_not_inline_data(tmp_path: Path):
    f = tmp_path / "a.png"
    f.write_bytes(PAYLOAD)
    server = ContentPolicy.server()
    for block in ({"type": "image", "url": str(f)}, {"type": "image", "url": f.as_uri()}, {"type": "image", "path": str(f)}):
        with pytest.raises(ContentBlockError, match="local files and file:// URLs are not allowed"):
            block_to_media(block, policy=server)
        assert block_to_media(block).source == f  # the library default allows them
    msg = HumanMessage(content=[{"type": "image", "url": f.as_uri()}])
    with pytest.raises(ContentBlockError, match="not allowed"):
        split_message(msg, policy=server)
    assert block_to_media({"type": "image", "url": f"data:image/png;base64,{B64}"}, policy=server).source == PAYLOAD
    assert block_to_media({"type": "image", "base64": B64, "mime_type": "image/png"}, policy=server).source == PAYLOAD
    store = {"f1": PAYLOAD}
    assert block_to_media({"type": "image", "file_id": "f1"}, file_resolver=store.get, policy=server).source == PAYLOAD


@pytest.mark.parametrize("policy", [ContentPolicy.library(), ContentPolicy.server()])
def test_loopback_server_reachable_only_when_private_network_allowed(server, policy):
    base, hits, _ = server
    with pytest.raises(FetchError, match="loopback address 127.0.0.1.*not allowed by this content policy"):
        block_to_media({"type": "image", "url": f"{base}/ok"}, policy=policy)
    assert hits == []  # refused before any connection
    allowed = policy.model_copy(update={"allow_private_network": True})
    assert block_to_media({"type": "image", "url": f"{base}/ok"}, policy=allowed).source == PAYLOAD
    assert hits == ["/ok"]


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://localhost:9/x.png", "loopback"),
        ("http://[::1]:9/x.png", "loopback"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.10/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata endpoint
        ("http://0.0.0.0:9/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://[::ffff:127.0.0.1]:9/x.png", "loopback"),
        ("http://2130706433/x.png", "loopback"),  # 127.0.0.1 written as one number
    ],
)
def test_private_addresses_refused_by_default(url, reason):
    with pytest.raises(FetchError, match=f"{reason} address"):
        fetch(url, use_cache=False)


def test_dns_name_resolving_to_loopback_is_refused_and_the_checked_address_is_used(server, monkeypatch):
    base, hits, hosts = server
    port = int(base.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host, *args, **kwargs):
        calls.append(host)
        if host in ("images.example", "mixed.example"):
            answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            if host == "mixed.example":  # a public answer next to a private one is still refused
                answers.insert(0, (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)))
            return answers
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    for name in ("images.example", "mixed.example"):
        with pytest.raises(FetchError, match=f"host '{name}' resolves to loopback address 127.0.0.1"):
            fetch(f"http://{name}:{port}/ok", use_cache=False)
    assert hits == []
    # allowed: the request goes to the address that was checked (the name itself resolves nowhere
    # else), resolved once, with the original Host header
    calls.clear()
    assert fetch(f"http://images.example:{port}/ok", LOCAL, use_cache=False) == PAYLOAD
    assert [c for c in calls if not c[0].isdigit()] == ["images.example"] and hosts == [f"images.example:{port}"]


def test_redirects_are_checked_at_every_hop(server, monkeypatch):
    base, hits, _ = server
    port = int(base.rsplit(":", 1)[1])
    # The first hop stands for a public server: its (loopback) address is let through once; the
    # real check then sees every later hop.
    real = content_fetch.address_refusal
    seen: list[str] = []

    def first_hop_public(ip):
        seen.append(str(ip))
        return None if len(seen) == 1 else real(ip)

    monkeypatch.setattr(content_fetch, "address_refusal", first_hop_public)
    with pytest.raises(FetchError, match="loopback address 127.0.0.1"):
        fetch(f"{base}/to?http://127.0.0.1:{port}/ok", use_cache=False)
    assert hits == ["/to?http://127.0.0.1:9/ok".replace(":9", f":{port}")] and seen == ["127.0.0.1", "127.0.0.1"]
    seen.clear()
    with pytest.raises(FetchError, match="loopback address"):
        fetch(f"{base}/to?http://localhost:{port}/ok", use_cache=False)
    seen.clear()
    with pytest.raises(FetchError, match="only http and https URLs"):
        fetch(f"{base}/to?file:///etc/passwd", use_cache=False)
    # allowed private network: redirects are followed (relative ones too), within the hop limit
    assert fetch(f"{base}/to?/ok", LOCAL, use_cache=False) == PAYLOAD
    with pytest.raises(FetchError, match="more than 2 redirects"):
        fetch(f"{base}/loop", LOCAL.model_copy(update={"max_redirects": 2}), use_cache=False)


def test_only_http_and_https_are_fetched():
    from ibllm_agent.fetch import safe_fetch

    with pytest.raises(FetchError, match="only http and https"):
        safe_fetch("ftp://example.org/a.png", timeout=1, max_bytes=10)
    with pytest.raises(ContentBlockError, match="unsupported URL scheme 'gopher'"):
        block_to_media({"type": "image", "url": "gopher://example.org/a.png"})


def test_https_requests_go_to_the_checked_ip_with_host_and_tls_name_kept(monkeypatch):
    import httpx

    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))])
    sent = []

    def send(self, request, **kwargs):
        sent.append(request)
        return httpx.Response(200, content=PAYLOAD, request=request)

    monkeypatch.setattr(httpx.Client, "send", send)
    assert fetch("https://images.example/cat.png?x=1", use_cache=False) == PAYLOAD
    [req] = sent
    assert str(req.url) == "https://93.184.216.34/cat.png?x=1"  # the resolved address, not the name
    assert req.headers["Host"] == "images.example"
    assert req.extensions["sni_hostname"] == "images.example"  # certificate checked against the name
