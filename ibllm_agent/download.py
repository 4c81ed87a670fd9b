"""Resumable, verified downloads of checkpoint files.

``download(url, dest)`` streams into ``dest.part`` beside the destination, resumes an existing
``.part`` with an HTTP ``Range`` request (restarting from zero when the server ignores it), checks
the size and sha256 when they are known, and only then renames the file into place, so ``dest``
never exists half-written. Failures are ``DownloadError`` / ``ChecksumError`` with the URL, the
reason and, for interrupted transfers, the kept ``.part`` file (run the same command again to
resume).

``fetch_weight(name)`` downloads one entry of the weights registry (``ibllm_agent.weights``): files
hosted on the Hugging Face Hub through ``huggingface_hub`` (``ibllm_agent.hub``), others with
``download``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ibllm_agent.errors import ChecksumError, DownloadError, IbllmError, ManualWeightMissingError

if TYPE_CHECKING:
    from ibllm_agent.config import Settings

CHUNK = 1 << 20  # 1 MiB per read: small enough for a smooth progress bar, large enough to be fast
USER_AGENT = "ibllm-agent (+https://github.com/ibllm-agent)"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3


def part_path(dest: Path) -> Path:
    """Where the partial download of ``dest`` lives (``<dest>.part``)."""
    return dest.with_name(dest.name + ".part")


def _meta_path(part: Path) -> Path:
    """``<dest>.part.meta``: which version of the remote file the ``.part`` holds (validator, size)."""
    return part.with_name(part.name + ".meta")


def _read_meta(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(part: Path, response: httpx.Response, total: int | None) -> None:
    """Remember the remote version the new ``.part`` starts from, so a later resume can ask for the
    rest of *that* version only (``If-Range``) and never splice two versions together."""
    etag = response.headers.get("etag")
    # If-Range needs a strong validator: a weak ETag (W/"...") cannot be used, Last-Modified can.
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")
    _meta_path(part).write_text(json.dumps({"validator": validator, "total": total}))


def _drop_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _progress_bar(total: int | None, initial: int, label: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` → (100, 1000); ``bytes */1000`` → (None, 1000); unknown total → None."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes ") :].partition("/")
    start = int(span.split("-", 1)[0]) if span != "*" and span.split("-", 1)[0].isdigit() else None
    return start, int(total) if total.isdigit() else None


def _check_disk_space(part: Path, url: str, needed: int) -> None:
    """Fail before writing when the target filesystem cannot hold the rest of the file."""
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(
            f"download of {url}: not enough disk space in {part.parent}: {needed} more bytes needed, "
            f"{free} free",
            url=url,
            partial=str(part) if part.exists() else None,
        )


@contextlib.contextmanager
def _exclusive(part: Path, url: str) -> Iterator[None]:
    """Hold ``<dest>.part.lock`` so two processes never append to the same partial file."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are unsupported
        yield
        return
    lock_path = part.with_name(part.name + ".lock")
    while True:
        handle = open(lock_path, "a+b")  # noqa: SIM115 - closed below, after the lock is released
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DownloadError(
                f"download of {url}: another process is already downloading to {part} "
                f"(lock {lock_path}); wait for it to finish",
                url=url,
            ) from None
        # The previous holder removes the lock file when it finishes. If that happened between our
        # open() and flock(), we hold a lock on a deleted file that a third process cannot see:
        # open the path again until the locked file is the one at lock_path.
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        yield
    finally:
        # Unlink while still holding the lock, so a waiter never locks a file that is being removed
        # without noticing (the inode check above catches the rest).
        lock_path.unlink(missing_ok=True)
        handle.close()


class _Restart(Exception):
    """Internal: the partial file is unusable; start again from byte 0 (does not use up a retry)."""


def _transfer_once(
    client: httpx.Client, url: str, part: Path, expected_size: int | None, progress: bool, label: str
) -> int | None:
    """One HTTP request that appends to ``part``. Returns the total size the server reported.

    Raises ``_Restart`` when the partial file must be dropped, ``DownloadError`` for HTTP errors that
    retrying cannot fix, and lets ``httpx.TransportError`` through for the retry loop.
    """
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        raise _Restart(f"partial file is larger ({offset} B) than the expected {expected_size} B")
    if expected_size is not None and offset == expected_size:
        return expected_size  # a previous run got every byte but stopped before verifying
    # identity encoding: byte ranges must address the file itself, not a compressed stream of it.
    headers = {"Accept-Encoding": "identity"}
    meta = _read_meta(part) if offset else {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            # "Only if the file is still the one the .part came from; else send it all" (RFC 9110):
            # a file replaced upstream then restarts from byte 0 (200) instead of being spliced.
            headers["If-Range"] = str(meta["validator"])
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 416 and offset:
            # Range starts at or past the end: the part is complete if the sizes agree.
            _, total = _parse_content_range(response.headers.get("content-range"))
            if total == offset:
                return total
            raise _Restart(f"server refused resuming at byte {offset} (HTTP 416)")
        if status == 404:
            raise DownloadError(
                f"download of {url} failed: HTTP 404 Not Found (no such file on the server)", url=url
            )
        if status >= 500 or status == 429:
            raise httpx.HTTPStatusError(f"HTTP {status}", request=response.request, response=response)
        if status not in (200, 206):
            reason = response.reason_phrase or "error"
            hint = (
                " (access denied: the file needs credentials this downloader does not send)"
                if status in (401, 403)
                else ""
            )
            raise DownloadError(f"download of {url} failed: HTTP {status} {reason}{hint}", url=url)

        if status == 206:
            start, total = _parse_content_range(response.headers.get("content-range"))
            if start != offset:
                raise _Restart(f"server answered the range request from byte {start}, not {offset}")
            if meta.get("total") is not None and total is not None and total != meta["total"]:
                raise _Restart(f"the file changed on the server ({meta['total']} -> {total} bytes)")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was no partial): write from byte 0.
            offset, mode = 0, "wb"
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            _drop_part(part)
            raise ChecksumError(
                f"download of {url}: the server reports {total} bytes but {expected_size} are expected "
                "(the file changed upstream or the URL is wrong)",
                url=url,
            )
        _check_disk_space(part, url, (total or expected_size or 0) - offset)
        if mode == "wb":
            _write_meta(part, response, total)
        received = offset
        bar = _progress_bar(total or expected_size, offset, label, progress)
        try:
            with open(part, mode) as out:
                # iter_raw() without a chunk size hands over bytes as they arrive, so an interrupted
                # transfer keeps everything received so far in the .part file.
                for block in response.iter_raw():
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        finally:
            bar.close()
        if total is not None and received < total:
            # The connection closed before Content-Length was reached without httpx noticing.
            raise httpx.RemoteProtocolError(f"connection closed after {received} of {total} bytes")
        return total if total is not None else received


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
    client: httpx.Client | None = None,
    label: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resume, verify, atomic rename) and return ``dest``.

    - An existing ``<dest>.part`` is resumed with ``Range: bytes=<size>-``; a server that answers
      200 instead of 206 is treated as "no resume" and the file restarts from byte 0. The ETag (or
      Last-Modified) and size of the version the part started from are kept in ``<dest>.part.meta``
      and sent as ``If-Range``, so a file replaced upstream restarts instead of being spliced.
    - Network errors, 5xx and 429 answers are retried ``retries`` times with exponential backoff
      (``backoff`` seconds, doubled each time); the partial file is kept between attempts and after
      the last one, so running the command again resumes.
    - ``expected_size`` / ``sha256`` mismatches raise ``ChecksumError``; the bad file is deleted and
      nothing is left at ``dest``.
    - ``dest`` appears only through ``os.replace`` of the complete, verified file.
    - A second process downloading to the same ``dest`` gets ``DownloadError`` at once (advisory
      lock ``<dest>.part.lock``); a transfer that cannot fit on the disk fails before writing.

    ``timeout`` is the per-read/connect timeout in seconds, not a limit on the whole transfer.
    Local file-system failures (folder not creatable, disk full, no permission) are
    ``DownloadError`` too, naming the path.
    """
    dest = Path(dest)
    part = part_path(dest)
    label = label or dest.name
    sha256 = sha256.lower() if sha256 else None
    owns_client = client is None
    try:
        if client is None:
            client = httpx.Client(
                follow_redirects=True, timeout=httpx.Timeout(timeout), headers={"User-Agent": USER_AGENT}
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(part, url):
            _fetch_to_part(client, url, part, expected_size, progress, label, retries, backoff)
            _verify_part(part, url, sha256, expected_size)
            os.replace(part, dest)  # atomic on one filesystem: dest is absent or complete, never partial
            _meta_path(part).unlink(missing_ok=True)
    except OSError as exc:
        if isinstance(exc, IbllmError):
            raise
        kept = str(part) if part.is_file() else None
        raise DownloadError(
            f"download of {url} to {dest} failed: {type(exc).__name__}: {exc}"
            + (f"; {kept} kept — run again to resume" if kept else ""),
            url=url,
            partial=kept,
        ) from None
    finally:
        if owns_client and client is not None:
            client.close()
    return dest


def _fetch_to_part(
    client: httpx.Client,
    url: str,
    part: Path,
    expected_size: int | None,
    progress: bool,
    label: str,
    retries: int,
    backoff: float,
) -> None:
    """Request until ``part`` holds the whole body: resume after network errors, restart when needed."""
    attempt = restarts = 0
    while True:
        try:
            _transfer_once(client, url, part, expected_size, progress, label)
            return
        except _Restart as why:
            _drop_part(part)
            restarts += 1
            if restarts > 2:  # a server that keeps answering inconsistently: give up, do not loop
                raise DownloadError(
                    f"download of {url}: cannot resume ({why}) even from byte 0", url=url
                ) from None
        except (httpx.InvalidURL, httpx.TooManyRedirects, httpx.DecodingError) as exc:
            # Not transient: retrying would give the same answer.
            raise DownloadError(f"download of {url} failed: {type(exc).__name__}: {exc}", url=url) from None
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            attempt += 1
            if attempt > retries:
                kept = str(part) if part.exists() else None
                where = f"; {part.stat().st_size} bytes kept in {part} — run again to resume" if kept else ""
                raise DownloadError(
                    f"download of {url} failed after {attempt} attempt(s): {type(exc).__name__}: {exc}{where}",
                    url=url,
                    partial=kept,
                ) from None
            time.sleep(backoff * 2 ** (attempt - 1))


def _verify_part(part: Path, url: str, sha256: str | None, expected_size: int | None) -> None:
    """Size and sha256 checks of the finished ``part``; a mismatch deletes it (``ChecksumError``)."""
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        _drop_part(part)
        raise ChecksumError(
            f"download of {url}: got {size} bytes, expected {expected_size}; file removed", url=url
        )
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            _drop_part(part)
            raise ChecksumError(
                f"download of {url}: sha256 {actual} does not match the published {sha256}; file removed",
                url=url,
            )


# --------------------------------------------------------------------------------------------------
# Registry entries


def _select(files: list[dict[str, Any]], patterns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [f for f in files if any(fnmatch.fnmatchcase(f["path"], p) for p in patterns)]


def fetch_weight(
    name: str,
    settings: Settings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    **download_kwargs: Any,
) -> Path:
    """Download registry entry ``name`` into the weights directory and return its path.

    Files already present are kept (use ``force=True`` to fetch them again); for entries with a
    published sha256 a present file is re-verified first. ``manual`` entries cannot be fetched: they
    raise ``MissingWeightError`` with instructions. Files hosted on the Hugging Face Hub (single
    files with a ``huggingface.co/.../resolve/...`` URL, and every file of an ``hf-repo`` entry that
    matches its patterns) go through ``huggingface_hub`` (``ibllm_agent.hub``: token, endpoint,
    offline mode, checked against the Hub's size and sha256/ETag); other URLs through ``download``.
    """
    from ibllm_agent.config import get_settings
    from ibllm_agent.hub import HubFile, hub_download, list_repo_files, parse_hub_url
    from ibllm_agent.weights import get_spec, how_to_get, missing_files, weights_path

    settings = settings or get_settings()
    spec = get_spec(name)
    root = weights_path(name, settings)
    say = echo or (lambda _msg: None)
    if spec.kind == "manual":
        missing = missing_files(name, settings)
        if missing:
            raise ManualWeightMissingError(name, str(missing[0]), how_to_get(spec, settings))
        say(f"{root} already present")
        return root
    timeout = download_kwargs.get("timeout", DEFAULT_TIMEOUT)
    if spec.kind == "file":
        for item in spec.files:
            dest = settings.weights_dir / item.path
            exact = item.size_bytes if item.size_exact else None
            if (hub := parse_hub_url(item.url)) is not None:
                hub_download(hub, dest, sha256=item.sha256, size=exact, force=force, progress=progress,
                             timeout=timeout, say=say)
                continue
            if _already_there(dest, item.sha256, exact, force, say):
                continue
            say(f"downloading {name}: {item.url} -> {dest}")
            download(
                item.url,
                dest,
                sha256=item.sha256,
                expected_size=exact,
                progress=progress,
                label=item.path,
                **download_kwargs,
            )
        return root
    # hf-repo
    try:
        listing = list_repo_files(spec.repo_id, spec.revision, timeout=timeout)
    except DownloadError as exc:
        if force or missing_files(name, settings):
            raise
        # Offline with a complete copy: keep it rather than fail (the listing only finds extra files).
        say(f"{root} already present (could not check the Hub for changes: {exc})")
        return root
    wanted = _select(listing, spec.allow_patterns)
    if not wanted:
        raise DownloadError(
            f"{spec.repo_id}@{spec.revision} has no files matching {', '.join(spec.allow_patterns)}",
            url=HubFile(spec.repo_id, spec.revision, "").url,
        )
    missing_required = [r for r in spec.required if r not in {f["path"] for f in wanted}]
    if missing_required:
        raise DownloadError(
            f"{spec.repo_id}@{spec.revision} lacks required file(s) {', '.join(missing_required)}",
            url=HubFile(spec.repo_id, spec.revision, "").url,
        )
    for entry in wanted:
        hub_download(HubFile(spec.repo_id, spec.revision, entry["path"]), root / entry["path"],
                     sha256=entry["sha256"], size=entry["size"], force=force, progress=progress,
                     timeout=timeout, say=say)
    return root


def _already_there(
    dest: Path, sha256: str | None, size: int | None, force: bool, say: Callable[[str], None]
) -> bool:
    """True when ``dest`` is present and (when known) has the right size and checksum."""
    if not dest.is_file():
        return False
    if force:
        return False  # the old file stays in place until the new one replaces it atomically
    if size is not None and dest.stat().st_size != size:
        say(f"{dest}: size {dest.stat().st_size} differs from {size}; downloading again")
        dest.unlink()
        return False
    if sha256 is not None and sha256_file(dest) != sha256.lower():
        say(f"{dest}: sha256 differs from the published one; downloading again")
        dest.unlink()
        return False
    say(f"{dest} already present")
    return True
