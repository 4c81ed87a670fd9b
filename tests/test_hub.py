"""Hub-hosted weights through huggingface_hub, against a local server speaking the Hub's file API
(HEAD/GET ``/{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``/``ETag``, and the tree listing
``/api/models/{repo}/tree/{rev}``), with ``HF_ENDPOINT`` pointing at it; plus offline mode."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ibllm_agent import weights
from ibllm_agent.config import get_settings
from ibllm_agent.download import fetch_weight
from ibllm_agent.errors import ChecksumError, DownloadError
from ibllm_agent.hub import HubFile, git_blob_sha1, list_repo_files, parse_hub_url
from ibllm_agent.weights import WeightFile, WeightSpec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ADAPTER = os.urandom(50_000)
PARAMS = b'{"dim": 64}'


def _sha1_blob(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


@dataclass
class Hub:
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> body
    served: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, path) -> body sent instead
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    extra_tree: dict[str, list[dict]] = field(default_factory=dict)
    base: str = ""

    def etag(self, body: bytes) -> str:
        # LFS files (big or binary) carry their sha256, small text files their git blob sha1
        return hashlib.sha256(body).hexdigest() if len(body) > 1000 else _sha1_blob(body)

    def gets(self) -> list[str]:
        return [p for m, p, _ in self.log if m == "GET" and "/resolve/" in p]


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status, body=b"", headers=None, head=False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head: bool):
            hub.log.append((self.command, self.path, self.headers.get("Authorization")))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/?]+)(\?.*)?", self.path):
                repo = m[1]
                if repo not in hub.files:
                    return self._reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                tree = [{"type": "directory", "path": d, "oid": "f" * 40} for d in
                        sorted({p.rsplit("/", 1)[0] for p in hub.files[repo] if "/" in p})]
                for path, body in hub.files[repo].items():
                    item = {"type": "file", "path": path, "size": len(body), "oid": _sha1_blob(body)}
                    if len(body) > 1000:
                        item.update(size=134, lfs={"oid": hashlib.sha256(body).hexdigest(), "size": len(body), "pointerSize": 134})
                    tree.append(item)
                tree += hub.extra_tree.get(repo, [])
                return self._reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
            body = hub.files.get(m[1], {}).get(m[3]) if m else None
            if body is None:
                return self._reply(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hub.etag(body)}"', "Accept-Ranges": "bytes"}
            sent = hub.served.get((m[1], m[3]), body)
            return self._reply(200, sent, headers, head)

        def do_GET(self):
            self._serve(head=False)

        def do_HEAD(self):
            self._serve(head=True)

    return Handler


@pytest.fixture
def hub(monkeypatch):
    state = Hub()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.base)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield state
    httpd.shutdown()
    httpd.server_close()


QUIET = {"progress": False, "timeout": 10.0}


def _file_entry(monkeypatch) -> WeightSpec:
    base = "https://huggingface.co/org/adapters/resolve/main"  # rewritten to $HF_ENDPOINT
    spec = WeightSpec(
        name="test_hub_file", kind="file", path="imagebind_llm/7B.pth", description="d", licence="MIT",
        source="s", size_bytes=None,
        files=(WeightFile("imagebind_llm/7B.pth", f"{base}/7B.pth"),
               WeightFile("imagebind_llm/delta/params.json", f"{base}/delta/params.json")),
    )
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    return spec


def test_hub_files_land_at_registry_paths_verified_with_token(hub, tmp_path, monkeypatch):
    hub.files["org/adapters"] = {"7B.pth": ADAPTER, "delta/params.json": PARAMS}
    _file_entry(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    settings = get_settings(weights_dir=tmp_path / "w")
    path = fetch_weight("test_hub_file", settings, **QUIET)
    assert path == settings.weights_dir / "imagebind_llm/7B.pth" and path.read_bytes() == ADAPTER
    assert (settings.weights_dir / "imagebind_llm/delta/params.json").read_bytes() == PARAMS
    assert weights.require("test_hub_file", settings) == path
    assert hub.gets() == ["/org/adapters/resolve/main/7B.pth", "/org/adapters/resolve/main/delta/params.json"]
    assert {auth for _, p, auth in hub.log if "/resolve/" in p} == {"Bearer hf_secret"}
    # unchanged ETag on the Hub: nothing is downloaded again
    fetch_weight("test_hub_file", settings, **QUIET)
    assert len(hub.gets()) == 2


@pytest.mark.parametrize("name", ["7B.pth", "delta/params.json"])  # LFS sha256 / git blob sha1
def test_hub_file_that_does_not_match_its_etag_is_removed(hub, tmp_path, monkeypatch, name):
    hub.files["org/adapters"] = {"7B.pth": ADAPTER, "delta/params.json": PARAMS}
    _file_entry(monkeypatch)
    settings = get_settings(weights_dir=tmp_path / "w")
    good = fetch_weight("test_hub_file", settings, **QUIET).parent
    body = hub.files["org/adapters"][name]
    hub.served[("org/adapters", name)] = bytes([body[0] ^ 1]) + body[1:]  # same size, other content
    # a forced download that fails verification keeps the good copy
    with pytest.raises(ChecksumError, match="does not match"):
        fetch_weight("test_hub_file", settings, force=True, **QUIET)
    assert (good / name).read_bytes() == body
    (good / name).unlink()
    with pytest.raises(ChecksumError, match="file removed"):
        fetch_weight("test_hub_file", settings, **QUIET)
    assert not (good / name).exists()


def test_offline_mode_uses_the_local_copy_without_network(hub, tmp_path, monkeypatch):
    hub.files["org/adapters"] = {"7B.pth": ADAPTER, "delta/params.json": PARAMS}
    _file_entry(monkeypatch)
    settings = get_settings(weights_dir=tmp_path / "w")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        fetch_weight("test_hub_file", settings, **QUIET)
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetch_weight("test_hub_file", settings, **QUIET)
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_weight("test_hub_file", settings, **QUIET).read_bytes() == ADAPTER
    assert hub.log == []


def test_unreachable_hub_keeps_a_present_copy_and_names_missing_files(hub, tmp_path, monkeypatch):
    hub.files["org/adapters"] = {"7B.pth": ADAPTER, "delta/params.json": PARAMS}
    _file_entry(monkeypatch)
    settings = get_settings(weights_dir=tmp_path / "w")
    fetch_weight("test_hub_file", settings, **QUIET)
    del hub.files["org/adapters"]
    messages: list[str] = []
    fetch_weight("test_hub_file", settings, echo=messages.append, **QUIET)
    assert any("could not check the Hub" in m for m in messages)
    (settings.weights_dir / "imagebind_llm/7B.pth").unlink()
    with pytest.raises(DownloadError, match=r"org/adapters@main: 7B.pth\) failed"):
        fetch_weight("test_hub_file", settings, **QUIET)


def _repo_entry(monkeypatch, repo="org/repo", patterns=("model_index.json", "*/config.json", "*/diffusion_pytorch_model.safetensors"),
                required=("model_index.json", "unet/diffusion_pytorch_model.safetensors")) -> WeightSpec:
    spec = WeightSpec(name="test_repo", kind="hf-repo", path=f"diffusers/{repo.split('/')[1]}", description="d",
                      licence="MIT", source="s", size_bytes=None, repo_id=repo, allow_patterns=patterns, required=required)
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    return spec


def test_hf_repo_entry_downloads_matching_files_with_lfs_checksums(hub, tmp_path, monkeypatch):
    unet = os.urandom(20_000)
    hub.files["org/repo"] = {
        "model_index.json": b'{"_class_name": "X"}',
        "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": unet,
        "unet/diffusion_pytorch_model.fp16.safetensors": os.urandom(2000),
        "v1-5.ckpt": os.urandom(3000),
    }
    _repo_entry(monkeypatch)
    settings = get_settings(weights_dir=tmp_path / "w")
    with pytest.raises(weights.MissingWeightError, match="ibllm-agent download test_repo"):
        weights.require("test_repo", settings)
    root = fetch_weight("test_repo", settings, **QUIET)
    assert root == settings.weights_dir / "diffusers/repo"
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert (root / "unet/diffusion_pytorch_model.safetensors").read_bytes() == unet
    assert weights.require("test_repo", settings) == root
    [row] = [r for r in weights.status(settings) if r.name == "test_repo"]
    assert row.present and row.size_on_disk == len(unet) + len(b'{"_class_name": "X"}') + 2  # not the Hub metadata
    hub.served[("org/repo", "unet/diffusion_pytorch_model.safetensors")] = os.urandom(20_000)
    with pytest.raises(ChecksumError):
        fetch_weight("test_repo", settings, force=True, **QUIET)
    assert (root / "unet/diffusion_pytorch_model.safetensors").read_bytes() == unet


def test_hf_repo_entry_errors_and_unsafe_listing(hub, tmp_path, monkeypatch):
    settings = get_settings(weights_dir=tmp_path / "w")
    _repo_entry(monkeypatch, "org/repo2", ("model_index.json", "unet/*"), ("model_index.json", "unet/config.json"))
    hub.files["org/repo2"] = {"model_index.json": b"{}"}
    with pytest.raises(DownloadError, match="lacks required file.*unet/config.json"):
        fetch_weight("test_repo", settings, **QUIET)
    hub.files["org/repo2"] = {"README.md": b"hi"}
    with pytest.raises(DownloadError, match="no files matching"):
        fetch_weight("test_repo", settings, **QUIET)
    with pytest.raises(DownloadError, match="cannot list org/nope@main"):
        list_repo_files("org/nope", "main")
    hub.files["org/evil"] = {}
    hub.extra_tree["org/evil"] = [{"type": "file", "path": "../../outside.txt", "size": 1, "oid": "0" * 40}]
    with pytest.raises(DownloadError, match="unsafe file path '../../outside.txt'"):
        list_repo_files("org/evil", "main")
    # a complete local copy is kept when the Hub cannot list the repo; an incomplete one fails
    del hub.files["org/repo2"]
    root = settings.weights_dir / "diffusers/repo2"
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    with pytest.raises(DownloadError, match="cannot list org/repo2@main"):
        fetch_weight("test_repo", settings, **QUIET)
    (root / "unet/config.json").write_text("{}")
    assert fetch_weight("test_repo", settings, **QUIET) == root


def test_hub_urls_parse_and_every_registry_hub_file_fits_its_path(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert parse_hub_url("https://huggingface.co/Cxxs/ImageBind-LLM/resolve/main/7B.pth") == HubFile(
        "Cxxs/ImageBind-LLM", "main", "7B.pth"
    )
    assert parse_hub_url("https://huggingface.co/a/b/resolve/main/x/..%2F..%2Fy") is None
    assert parse_hub_url("https://example.org/a/b/resolve/main/x") is None
    assert parse_hub_url("https://huggingface.co/a/b/tree/main") is None
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/hf/")
    hub = parse_hub_url("https://huggingface.co/a/b/resolve/v1.0/dir/f.bin")
    assert hub.url == "https://mirror.example/hf/a/b/resolve/v1.0/dir/f.bin"
    hub_files = [(f.path, parse_hub_url(f.url)) for s in weights.WEIGHTS.values() for f in s.files if f.url]
    hub_files = [(path, h) for path, h in hub_files if h]
    assert len(hub_files) >= 7  # adapters, imagebind_w3d, knn index, open-chinese delta files
    kept = [path for path, h in hub_files if Path(path).parts[-len(Path(h.filename).parts):] == Path(h.filename).parts]
    assert len(kept) >= 7  # most keep the Hub's name (huggingface_hub's local_dir bookkeeping applies)


def test_registry_name_differing_from_the_hub_name(hub, tmp_path, monkeypatch):
    """e.g. bert-base-uncased ``vocab.txt`` stored as ``groundingdino/bert-base-uncased-vocab.txt``."""
    vocab = b"[PAD]\n[UNK]\nhello\n"
    hub.files["org/bert"] = {"vocab.txt": vocab}
    spec = WeightSpec(name="test_renamed", kind="file", path="gd/bert-vocab.txt", description="d", licence="MIT",
                      source="s", size_bytes=None,
                      files=(WeightFile("gd/bert-vocab.txt", "https://huggingface.co/org/bert/resolve/main/vocab.txt"),))
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    settings = get_settings(weights_dir=tmp_path / "w")
    path = fetch_weight("test_renamed", settings, **QUIET)
    assert path.read_bytes() == vocab and sorted(p.name for p in path.parent.iterdir()) == ["bert-vocab.txt"]
    fetch_weight("test_renamed", settings, **QUIET)  # present and matching the ETag: not fetched again
    assert len(hub.gets()) == 1
    path.write_bytes(b"[PAD]\n[UNK]\nhellO\n")  # same size, other content: fetched again
    assert fetch_weight("test_renamed", settings, **QUIET).read_bytes() == vocab and len(hub.gets()) == 2
    hub.served[("org/bert", "vocab.txt")] = b"[PAD]\n[UNK]\nHELLO\n"
    with pytest.raises(ChecksumError, match="git blob sha1"):
        fetch_weight("test_renamed", settings, force=True, **QUIET)
    assert path.read_bytes() == vocab and sorted(p.name for p in path.parent.iterdir()) == ["bert-vocab.txt"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    assert fetch_weight("test_renamed", settings, **QUIET) == path and hub.log == []


def test_git_blob_sha1_matches_git(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"hello\n")
    assert git_blob_sha1(f) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"
