"""The download manager against a real HTTP server on 127.0.0.1 (ephemeral port, own thread).

The server (written here) supports ``Range``, can ignore it, cut a body short and fail with 404/503.
Hub-hosted files (huggingface_hub) are tested in tests/test_hub.py. Every request is logged so tests can
assert which bytes were asked for and sent.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ibllm_agent import weights
from ibllm_agent.config import get_settings
from ibllm_agent.download import download, fetch_weight, part_path
from ibllm_agent.errors import ChecksumError, DownloadError, ManualWeightMissingError
from ibllm_agent.weights import WeightFile, WeightSpec

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Logged:
    path: str
    range: str | None
    status: int
    body_bytes: int
    auth: str | None = None
    if_range: str | None = None


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_after: int | None = None  # close the connection after this many body bytes
    cut_times: int = 1_000_000  # ... for this many requests
    fail_status: int | None = None  # answer with this status ...
    fail_times: int = 0  # ... for this many requests
    mid_body: Callable[[], None] | None = None  # called halfway through each body
    log: list[Logged] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)  # path -> ETag (honours If-Range)


def _make_handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(
            self, status: int, body: bytes, headers: dict[str, str] | None = None, cut: int | None = None
        ):
            # Logged before anything is sent: the client may act on the headers at once.
            state.log.append(
                Logged(
                    self.path,
                    self.headers.get("Range"),
                    status,
                    len(body if cut is None else body[:cut]),
                    self.headers.get("Authorization"),
                    self.headers.get("If-Range"),
                )
            )
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = body if cut is None else body[:cut]
            half = len(sent) // 2
            try:
                self.wfile.write(sent[:half])
                self.wfile.flush()
                if state.mid_body is not None:
                    state.mid_body()
                self.wfile.write(sent[half:])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (error answers)
                self.close_connection = True
                return
            if cut is not None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self):
            if self.path.startswith("/loop"):  # a redirect loop
                return self._send(302, b"", {"Location": "/loop"})
            if state.fail_times > 0:
                state.fail_times -= 1
                return self._send(state.fail_status or 500, b"try later")
            body = state.files.get(self.path)
            if body is None:
                return self._send(404, b"not found")
            cut = None
            if state.cut_after is not None and state.cut_times > 0:
                state.cut_times -= 1
                cut = state.cut_after
            rng = self.headers.get("Range")
            etag = state.etags.get(self.path)
            if rng and self.headers.get("If-Range") not in (None, etag):
                rng = None  # RFC 9110: the file changed since the client's copy, send all of it
            if rng and not state.ignore_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(body):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                part = body[start:]
                headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                if etag:
                    headers["ETag"] = etag
                return self._send(206, part, headers, None if cut is None else max(0, cut - start))
            headers = {"Accept-Ranges": "none" if state.ignore_range else "bytes"}
            if etag:
                headers["ETag"] = etag
            return self._send(200, body, headers, cut)

    return Handler


@pytest.fixture
def server():
    state = ServerState(files={"/payload.bin": PAYLOAD})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.handle_error = lambda request, client_address: None  # clients hanging up are expected here
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


FAST = {"progress": False, "backoff": 0.0, "timeout": 10.0}


def test_full_download_verifies_and_leaves_no_part(server, tmp_path, capsys):
    dest = tmp_path / "sub" / "payload.bin"
    out = download(
        f"{server.base}/payload.bin", dest, sha256=SHA, expected_size=len(PAYLOAD), progress=True, backoff=0.0
    )
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert [(r.range, r.status, r.body_bytes) for r in server.log] == [(None, 200, len(PAYLOAD))]
    assert "payload.bin" in capsys.readouterr().err  # the progress bar goes to stderr


def test_resume_requests_only_missing_bytes(server, tmp_path):
    dest = tmp_path / "payload.bin"
    part_path(dest).write_bytes(PAYLOAD[:100_000])
    download(f"{server.base}/payload.bin", dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.log) == 1
    assert server.log[0].range == "bytes=100000-"
    assert server.log[0].status == 206
    assert server.log[0].body_bytes == len(PAYLOAD) - 100_000


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "payload.bin"
    part_path(dest).write_bytes(PAYLOAD[:50_000])
    download(f"{server.base}/payload.bin", dest, sha256=SHA, **FAST)
    # The 200 body is the whole file: appending it to the partial would duplicate 50 kB.
    assert dest.read_bytes() == PAYLOAD
    assert [(r.range, r.status) for r in server.log] == [("bytes=50000-", 200)]


def test_complete_part_answered_416_is_finalised(server, tmp_path):
    dest = tmp_path / "payload.bin"
    part_path(dest).write_bytes(PAYLOAD)
    download(f"{server.base}/payload.bin", dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [(r.range, r.status) for r in server.log] == [(f"bytes={len(PAYLOAD)}-", 416)]


def test_oversized_part_is_dropped(server, tmp_path):
    dest = tmp_path / "payload.bin"
    part_path(dest).write_bytes(PAYLOAD + b"junk")
    download(f"{server.base}/payload.bin", dest, expected_size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.log[0].range is None


def test_bad_checksum_removes_file(server, tmp_path):
    dest = tmp_path / "payload.bin"
    with pytest.raises(ChecksumError, match="sha256") as info:
        download(f"{server.base}/payload.bin", dest, sha256="0" * 64, **FAST)
    assert "payload.bin" in str(info.value)
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_wrong_expected_size_is_a_checksum_error(server, tmp_path):
    dest = tmp_path / "payload.bin"
    with pytest.raises(ChecksumError, match=f"{len(PAYLOAD)} bytes"):
        download(f"{server.base}/payload.bin", dest, expected_size=len(PAYLOAD) + 1, **FAST)
    assert not dest.exists() and not part_path(dest).exists()


def test_404_is_typed_and_not_retried(server, tmp_path):
    dest = tmp_path / "missing.bin"
    with pytest.raises(DownloadError, match="404") as info:
        download(f"{server.base}/missing.bin", dest, retries=3, **FAST)
    assert info.value.url.endswith("/missing.bin")
    assert len(server.log) == 1
    assert not dest.exists() and not part_path(dest).exists()


def test_server_error_is_retried(server, tmp_path):
    server.fail_status, server.fail_times = 503, 2
    dest = tmp_path / "payload.bin"
    download(f"{server.base}/payload.bin", dest, sha256=SHA, retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r.status for r in server.log] == [503, 503, 200]


def test_persistent_server_error_gives_up(server, tmp_path):
    server.fail_status, server.fail_times = 503, 10
    with pytest.raises(DownloadError, match="after 2 attempt"):
        download(f"{server.base}/payload.bin", tmp_path / "p.bin", retries=1, **FAST)


def test_interrupted_transfer_keeps_partial_then_resumes(server, tmp_path):
    server.cut_after, server.cut_times = 120_000, 1
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError, match="run again to resume") as info:
        download(f"{server.base}/payload.bin", dest, sha256=SHA, retries=0, **FAST)
    part = part_path(dest)
    assert info.value.partial == str(part)
    assert part.read_bytes() == PAYLOAD[:120_000]
    assert not dest.exists()
    # Same call again: only the rest is requested.
    download(f"{server.base}/payload.bin", dest, sha256=SHA, retries=0, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.log[-1].range == "bytes=120000-"
    assert server.log[-1].body_bytes == len(PAYLOAD) - 120_000


def test_interruption_is_resumed_within_one_call(server, tmp_path):
    server.cut_after, server.cut_times = 70_000, 1
    dest = tmp_path / "payload.bin"
    download(f"{server.base}/payload.bin", dest, sha256=SHA, retries=1, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.log] == [None, "bytes=70000-"]


def test_dest_is_never_half_written(server, tmp_path):
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"old version")
    seen = []
    server.mid_body = lambda: seen.append(dest.read_bytes())  # what a reader sees mid-transfer
    download(f"{server.base}/payload.bin", dest, sha256=SHA, **FAST)
    assert seen == [b"old version"]
    assert dest.read_bytes() == PAYLOAD

    fresh = tmp_path / "fresh.bin"
    seen_fresh = []
    server.mid_body = lambda: seen_fresh.append(fresh.exists())
    download(f"{server.base}/payload.bin", fresh, **FAST)
    assert seen_fresh == [False]


def test_connection_refused_is_typed(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="ConnectError"):
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", retries=0, **FAST)


# ---- registry entries ------------------------------------------------------------------------


def _settings(tmp_path: Path):
    return get_settings(weights_dir=tmp_path / "weights")


def test_fetch_file_entry_verifies_skips_and_forces(server, tmp_path, monkeypatch):
    spec = WeightSpec(
        name="test_file",
        kind="file",
        path="test/payload.bin",
        description="d",
        licence="MIT",
        source="s",
        size_bytes=len(PAYLOAD),
        size_exact=True,
        files=(WeightFile("test/payload.bin", f"{server.base}/payload.bin", len(PAYLOAD), True, SHA),),
    )
    monkeypatch.setitem(weights.WEIGHTS, "test_file", spec)
    settings = _settings(tmp_path)
    path = fetch_weight("test_file", settings, **FAST)
    assert path == settings.weights_dir / "test/payload.bin"
    assert path.read_bytes() == PAYLOAD
    assert weights.require("test_file", settings) == path

    fetch_weight("test_file", settings, **FAST)  # present and verified: no request
    assert len(server.log) == 1
    path.write_bytes(b"corrupted")  # wrong size: fetched again
    fetch_weight("test_file", settings, **FAST)
    assert path.read_bytes() == PAYLOAD and len(server.log) == 2
    fetch_weight("test_file", settings, force=True, **FAST)
    assert len(server.log) == 3


def test_fetch_manual_entry_explains(tmp_path):
    settings = _settings(tmp_path)
    with pytest.raises(ManualWeightMissingError, match="cannot be downloaded automatically") as info:
        fetch_weight("llama_7b", settings, **FAST)
    assert str(settings.weights_dir / "llama") in str(info.value)


def test_second_concurrent_download_is_refused(server, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    dest = tmp_path / "payload.bin"
    lock = tmp_path / "payload.bin.part.lock"
    with open(lock, "a+b") as held:  # another process holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another process is already downloading"):
            download(f"{server.base}/payload.bin", dest, **FAST)
    assert server.log == [] and not dest.exists()
    download(f"{server.base}/payload.bin", dest, **FAST)  # lock released: works, lock file cleaned up
    assert dest.read_bytes() == PAYLOAD and not lock.exists()


def test_not_enough_disk_space_fails_before_writing(server, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    dest = tmp_path / "payload.bin"
    with pytest.raises(
        DownloadError, match=f"not enough disk space.*{len(PAYLOAD)} more bytes needed, 1000 free"
    ):
        download(f"{server.base}/payload.bin", dest, **FAST)
    assert not dest.exists() and not part_path(dest).exists()


def test_unwritable_destination_is_download_error(server, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the weights folder should be")
    dest = blocker / "sub" / "payload.bin"
    with pytest.raises(DownloadError, match=f"to {dest} failed: .*Error") as info:
        download(f"{server.base}/payload.bin", dest, **FAST)
    assert info.value.partial is None
    assert server.log == []  # nothing requested when the file cannot be written


def test_redirect_loop_is_typed_and_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="TooManyRedirects"):
        download(f"{server.base}/loop", tmp_path / "x.bin", retries=3, **FAST)
    assert len(server.log) == 21  # one request plus httpx's 20 redirects: no retries on top
    assert not (tmp_path / "x.bin").exists()


def test_lock_removed_by_previous_holder_is_taken_on_the_live_file(server, tmp_path, monkeypatch):
    """The previous downloader deletes the lock file between our open() and flock(): we must end up
    holding the lock on the file at the lock path, so that a third process is refused."""
    fcntl = pytest.importorskip("fcntl")
    real_flock = fcntl.flock
    dest = tmp_path / "payload.bin"
    lock = tmp_path / "payload.bin.part.lock"
    lock.write_bytes(b"")  # left by the previous holder, which is just finishing
    removed = []

    def flock(fd, op):
        if op & fcntl.LOCK_EX and not removed:
            removed.append(True)
            lock.unlink()  # the previous holder's cleanup, right before our flock
        return real_flock(fd, op)

    third_refused = []

    def third_process_tries():
        with open(lock, "a+b") as handle:
            try:
                real_flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                third_refused.append(True)
            else:
                third_refused.append(False)
                real_flock(handle, fcntl.LOCK_UN)

    monkeypatch.setattr(fcntl, "flock", flock)
    server.mid_body = third_process_tries
    download(f"{server.base}/payload.bin", dest, sha256=SHA, **FAST)
    assert removed and third_refused == [True]
    assert dest.read_bytes() == PAYLOAD and not lock.exists()


def _meta(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.meta")


def test_resume_asks_for_the_same_version_with_if_range(server, tmp_path):
    server.etags["/payload.bin"] = '"v1"'
    server.cut_after, server.cut_times = 100_000, 1
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    assert _meta(dest).is_file()
    download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert (server.log[-1].range, server.log[-1].if_range, server.log[-1].status) == (
        "bytes=100000-",
        '"v1"',
        206,
    )
    assert not _meta(dest).exists() and not part_path(dest).exists()


def test_file_replaced_upstream_restarts_instead_of_splicing(server, tmp_path):
    # Most official checkpoints publish no sha256: nothing would catch a file made of two versions.
    server.etags["/payload.bin"] = '"v1"'
    server.cut_after, server.cut_times = 100_000, 1
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError):
        download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    new = os.urandom(len(PAYLOAD))  # same size, new content
    server.files["/payload.bin"], server.etags["/payload.bin"] = new, '"v2"'
    download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    assert dest.read_bytes() == new
    assert (server.log[-1].if_range, server.log[-1].status) == ('"v1"', 200)


def test_size_change_upstream_without_validator_restarts(server, tmp_path):
    server.cut_after, server.cut_times = 100_000, 1  # no ETag: only the size tells versions apart
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError):
        download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    bigger = os.urandom(len(PAYLOAD) + 5_000)
    server.files["/payload.bin"] = bigger
    download(f"{server.base}/payload.bin", dest, retries=0, **FAST)
    assert dest.read_bytes() == bigger
    assert [(r.range, r.status) for r in server.log[-2:]] == [("bytes=100000-", 206), (None, 200)]
