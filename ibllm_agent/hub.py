"""Files hosted on the Hugging Face Hub, fetched with ``huggingface_hub`` into the weights dir.

A registry file whose URL is ``https://huggingface.co/{org}/{repo}/resolve/{revision}/{path}`` (or the
same under ``$HF_ENDPOINT``) is a ``HubFile``; ``hub_download`` puts it at the registry's path with
``hf_hub_download(local_dir=...)`` (so ``imagebind_llm/7B.pth`` stays where the loaders look), then
checks it against what the Hub publishes for it: the size and the ETag, which is the sha256 of an
LFS file or the git blob sha1 of a small one. What ``huggingface_hub`` brings: ``$HF_TOKEN`` (or a
``hf auth login`` token) for gated repos, ``$HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE=1`` (the local
copy is used, nothing is asked of the network), and its per-folder metadata
(``<folder>/.cache/huggingface/``) that skips files whose ETag has not changed. Our own downloader
(``download.py``) stays for every other URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ChecksumError, DownloadError

HUB_HOST = "huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def hf_endpoint() -> str:
    """The Hugging Face server (``$HF_ENDPOINT``, read at call time; default huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}").rstrip("/")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set now or when ``huggingface_hub`` was imported."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on") or bool(constants.is_offline_mode())


def _token() -> str | None:
    # None lets huggingface_hub fall back to the token saved by ``hf auth login``.
    return os.environ.get("HF_TOKEN") or None


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    revision: str
    filename: str

    @property
    def url(self) -> str:
        quoted = urllib.parse.quote(self.revision, safe="")
        return f"{hf_endpoint()}/{self.repo_id}/resolve/{quoted}/{urllib.parse.quote(self.filename)}"


def parse_hub_url(url: str | None) -> HubFile | None:
    """``HubFile`` for a ``…/{org}/{repo}/resolve/{revision}/{path}`` URL on huggingface.co or the
    current ``$HF_ENDPOINT``; ``None`` for any other URL."""
    if not url:
        return None
    for base in {f"https://{HUB_HOST}", hf_endpoint()}:
        if url.startswith(base + "/"):
            rest = urllib.parse.urlsplit(url[len(base) + 1 :]).path
            parts = rest.split("/")
            if len(parts) >= 5 and parts[2] == "resolve" and all(parts):
                filename = urllib.parse.unquote("/".join(parts[4:]))
                if ".." in filename.split("/"):
                    return None
                return HubFile(f"{parts[0]}/{parts[1]}", urllib.parse.unquote(parts[3]), filename)
    return None


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (what the Hub's ETag is for files not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, url: str, *, etag: str | None, size: int | None, sha256: str | None = None) -> None:
    """Size, published sha256 and ETag (sha256 of LFS files, git sha1 of others) of ``path``;
    a mismatch deletes the file and raises ``ChecksumError``."""
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"got {actual_size} bytes, the Hub says {size}")
    wanted_sha = (sha256 or "").lower() or (etag if etag and _SHA256.fullmatch(etag) else None)
    if not problems and wanted_sha and (actual := _sha256(path)) != wanted_sha:
        problems.append(f"sha256 {actual} does not match the published {wanted_sha}")
    if not problems and etag and _SHA1.fullmatch(etag) and (actual := git_blob_sha1(path)) != etag:
        problems.append(f"git blob sha1 {actual} does not match the Hub's ETag {etag}")
    if problems:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"download of {url}: {'; '.join(problems)}; file removed", url=url)


def _quiet_tqdm() -> type:
    from tqdm.auto import tqdm

    class Quiet(tqdm):  # huggingface_hub takes a tqdm class, not a flag
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _hub_error(hub: HubFile, exc: Exception) -> DownloadError:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        why = "the repository is gated: accept its licence on the model page and set HF_TOKEN"
    elif isinstance(exc, RepositoryNotFoundError):
        why = "no such repository (or it is private: set HF_TOKEN)"
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
        why = f"HTTP {exc.response.status_code}"
    else:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return DownloadError(f"download of {hub.url} ({hub.repo_id}@{hub.revision}: {hub.filename}) failed: {why}", url=hub.url)


def _local_dir(dest: Path, filename: str) -> Path | None:
    """The folder that ``filename`` (a repo path) must be placed under to land at ``dest``; ``None``
    when the registry renames the file (e.g. ``vocab.txt`` stored as ``bert-base-uncased-vocab.txt``)."""
    parts = Path(filename).parts
    if dest.parts[-len(parts) :] != parts:
        return None
    return dest.parents[len(parts) - 1]


def _matches(path: Path, etag: str | None, size: int | None) -> bool:
    """Whether a present file is the Hub's version (size, then sha256 / git sha1 of the ETag)."""
    if size is not None and path.stat().st_size != size:
        return False
    if etag and _SHA256.fullmatch(etag):
        return _sha256(path) == etag
    if etag and _SHA1.fullmatch(etag):
        return git_blob_sha1(path) == etag
    return False


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def hub_download(
    hub: HubFile,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 30.0,
    say: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Put ``hub`` at ``dest`` (see module docstring) and return ``dest``.

    Online, the Hub's metadata is read first; when the Hub cannot be reached a present copy is kept.
    A file that is (re)downloaded is verified; an unchanged one (same ETag) is not read again.
    ``force`` downloads into a staging folder and replaces ``dest`` only after verification, so a
    failed forced download keeps the old copy; so does a file the registry stores under another
    name than the Hub's (checked by content against the ETag when present, no metadata kept).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    local_dir = _local_dir(dest, hub.filename)
    # Forced and renamed files are downloaded into a staging folder and moved into place once verified.
    staged = force or local_dir is None
    common = {"revision": hub.revision, "endpoint": hf_endpoint(), "token": _token(), "etag_timeout": timeout}
    if not progress:
        common["tqdm_class"] = _quiet_tqdm()
    if offline():
        if force:
            raise DownloadError(f"cannot force a download of {hub.url}: HF_HUB_OFFLINE is set", url=hub.url)
        try:
            if local_dir is None:
                if not dest.is_file():
                    raise LocalEntryNotFoundError(str(dest))
            else:
                hf_hub_download(hub.repo_id, hub.filename, local_dir=local_dir, local_files_only=True, **common)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            raise DownloadError(
                f"{dest} is not present and HF_HUB_OFFLINE is set: unset it to download {hub.url}", url=hub.url
            ) from None
        say(f"{dest} present (offline: not checked against the Hub)")
        return dest
    try:
        meta = get_hf_file_metadata(hub.url, token=_token(), timeout=timeout, endpoint=hf_endpoint())
    except (HfHubHTTPError, OSError, ValueError) as exc:
        if dest.is_file() and not force:
            say(f"{dest} already present (could not check the Hub for changes: {_hub_error(hub, exc)})")
            return dest
        raise _hub_error(hub, exc) from None
    expected_size = meta.size if size is None else size
    if local_dir is None and not force and dest.is_file() and _matches(dest, meta.etag, expected_size):
        say(f"{dest} already present (matches the Hub's ETag)")
        return dest
    before = _signature(dest)
    target = dest.parent / ".cache" / "ibllm-staging" if staged else local_dir
    if staged:
        shutil.rmtree(target, ignore_errors=True)
    try:
        try:
            got = Path(hf_hub_download(hub.repo_id, hub.filename, local_dir=target, force_download=staged, **common))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise _hub_error(hub, exc) from None
        if staged or _signature(got) != before:
            verify(got, hub.url, etag=meta.etag, size=expected_size, sha256=sha256)
            say(f"downloaded {hub.repo_id}/{hub.filename} -> {dest} (verified against the Hub)")
        else:
            say(f"{dest} already present (ETag unchanged on the Hub)")
        if staged:
            os.replace(got, dest)
    finally:
        if staged:
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):  # .cache/ itself, unless huggingface_hub keeps metadata there
                target.parent.rmdir()
    return dest


def list_repo_files(repo_id: str, revision: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Files of a model repo at ``revision`` via ``HfApi.list_repo_tree``: dicts with ``path``,
    ``size``, ``sha256`` (LFS files) and ``git_sha1``. Paths that would leave the folder are refused."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub = HubFile(repo_id, revision, "")
    api = HfApi(endpoint=hf_endpoint(), token=_token())
    try:
        entries = list(api.list_repo_tree(repo_id, revision=revision, recursive=True))
    except (HfHubHTTPError, OSError, ValueError, TypeError, KeyError) as exc:
        err = _hub_error(hub, exc)
        raise DownloadError(f"cannot list {repo_id}@{revision} ({hf_endpoint()}): {err}", url=hub.url) from None
    files = []
    for entry in entries:
        if not hasattr(entry, "blob_id"):  # RepoFolder
            continue
        path = str(entry.path)
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise DownloadError(f"{repo_id}@{revision} lists an unsafe file path {path!r}", url=hub.url)
        lfs = entry.lfs
        files.append(
            {
                "path": path,
                "size": lfs.size if lfs else entry.size,
                "sha256": lfs.sha256 if lfs else None,
                "git_sha1": None if lfs else entry.blob_id,
            }
        )
    return files
