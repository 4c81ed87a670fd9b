"""Per-thread media workspace: attachments stored under GPT4Tools names, tool paths kept inside.

Layout (one folder per conversation thread)::

    <workspace_dir>/threads/<thread>/image/ab12cd34.png
                                    /audio/0f3c9e1a.wav
                                    /video/…mp4   /pointcloud/…npy   /depth/…png   /thermal/…png
                                    /imu/…npy     /text/…txt
                                    /.thread_id   (the original thread id, for listing)

Names are what the model sees and writes back in ``Action Input`` lines, so they follow the GPT4Tools
upload rule: ``{folder}/{first 8 hex chars of a uuid4}.{ext}``. Images are resized so the longer side
is 512 and then each side is rounded to a multiple of 64 (the GPT4Tools / Visual ChatGPT upload rule
the model was trained with), and stored as RGB PNG (the converters live in ``agent/attachments.py``).

``ThreadWorkspace.resolve`` is the one gate every tool path goes through: absolute paths, ``..``,
symlinks that lead out of the thread folder and names that do not exist raise typed errors whose
messages are written for the model to read ("file not found: image/abcd1234.png; known files: …").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ibllm_agent.agent.attachments import (
    WRITERS,
    check_loadable,
    describe_source,
    gpt4tools_image_size,
    infer_modality_of,
)
from ibllm_agent.errors import WorkspaceError, WorkspaceFileNotFoundError

__all__ = [
    "FOLDERS",
    "StoredFile",
    "ThreadWorkspace",
    "Workspace",
    "gpt4tools_image_size",
    "neutral_description",
]

# modality -> (folder, extension of the stored file). Image-like sensor maps keep PNG; arrays NPY.
FOLDERS: dict[str, tuple[str, str]] = {
    "image": ("image", ".png"),
    "audio": ("audio", ".wav"),
    "video": ("video", ".mp4"),
    "point": ("pointcloud", ".npy"),
    "depth": ("depth", ".png"),
    "thermal": ("thermal", ".png"),
    "imu": ("imu", ".npy"),
    "text": ("text", ".txt"),
}

# Article + noun per modality, for the neutral description of an attachment.
_NOUNS: dict[str, str] = {
    "image": "an image",
    "audio": "an audio clip",
    "video": "a video",
    "point": "a point cloud",
    "depth": "a depth map",
    "thermal": "a thermal image",
    "imu": "an IMU recording",
    "text": "a text",
}

_SAFE_THREAD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_THREAD_MARKER = ".thread_id"


def neutral_description(modality: str) -> str:
    """The description used when no caption expert describes an attachment."""
    noun = _NOUNS.get(modality, "a file")
    return f"{noun[0].upper()}{noun[1:]} provided by the user."


@dataclass(frozen=True)
class StoredFile:
    """An attachment stored in a thread workspace: its workspace name, absolute path and modality."""

    name: str
    path: Path
    modality: str


class Workspace:
    """The root of all thread workspaces (``Settings.workspace_dir`` by default).

    ``thread(thread_id)`` gives the ``ThreadWorkspace`` of one conversation; ``delete_thread``
    removes its files (the agent calls it when a thread is deleted).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None):
        if root is None:
            from ibllm_agent.config import get_settings

            root = get_settings().workspace_dir
        self.root = Path(root).expanduser().absolute()

    @property
    def threads_dir(self) -> Path:
        return self.root / "threads"

    def thread_dir(self, thread_id: str) -> Path:
        """Folder of ``thread_id``; unsafe ids (slashes, dots, long) map to a stable hash."""
        thread_id = str(thread_id)
        if not thread_id:
            raise WorkspaceError("thread id must not be empty")
        if _SAFE_THREAD.match(thread_id) and thread_id not in {".", ".."}:
            folder = thread_id
        else:
            folder = "t-" + hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:16]
        return self.threads_dir / folder

    def thread(self, thread_id: str) -> ThreadWorkspace:
        """The workspace of ``thread_id`` (its folder is created on first write)."""
        return ThreadWorkspace(self.thread_dir(thread_id), str(thread_id))

    def threads(self) -> list[str]:
        """Thread ids that have stored files, sorted."""
        if not self.threads_dir.is_dir():
            return []
        ids = []
        for d in self.threads_dir.iterdir():
            marker = d / _THREAD_MARKER
            if d.is_dir() and marker.is_file():
                ids.append(marker.read_text(encoding="utf-8"))
        return sorted(ids)

    def delete_thread(self, thread_id: str) -> bool:
        """Remove the files of ``thread_id``; True if there was a folder to remove."""
        folder = self.thread_dir(thread_id)
        if folder.is_dir():
            shutil.rmtree(folder)
            return True
        return False

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"


class ThreadWorkspace:
    """The files of one conversation thread; every tool path is resolved through ``resolve``."""

    def __init__(self, root: Path, thread_id: str):
        self.root = Path(root)
        self.thread_id = thread_id
        self._lock = threading.Lock()

    # -- listing -----------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """Workspace names (``image/ab12cd34.png``) of all stored files, sorted."""
        if not self.root.is_dir():
            return []
        names = []
        for p in self.root.rglob("*"):
            rel = p.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not p.is_file() or p.is_symlink():
                continue
            names.append(rel.as_posix())
        return sorted(names)

    def delete(self) -> None:
        """Remove every file of this thread."""
        if self.root.is_dir():
            shutil.rmtree(self.root)

    # -- path safety -------------------------------------------------------------------------------
    def resolve(self, name: str | os.PathLike[str]) -> Path:
        """The absolute path of workspace file ``name``, or a typed error the model can read.

        Accepts what a model writes: spaces, matching surrounding quote pairs and backslashes are tolerated, and a
        bare file name (``ab12cd34.png``, as in GPT4Tools' training data, which used random folders)
        matches a stored file with that name when exactly one exists.

        Raises:
            WorkspaceError: absolute path, ``..``, or a symlink leading outside the workspace.
            WorkspaceFileNotFoundError: no such file (the message lists the known files).
        """
        raw = os.fspath(name)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        text = unquote(raw).replace("\\", "/")
        if not text:
            raise WorkspaceFileNotFoundError(f"file not found: (empty name); known files: {self._known()}")
        bad = _bad_name(text)
        if bad:
            raise WorkspaceFileNotFoundError(f"file not found: {_shown(text)} ({bad}); known files: {self._known()}")
        try:
            return self._resolve(text)
        except WorkspaceError:  # a FileNotFoundError too: already the model-readable message
            raise
        except OSError as exc:  # e.g. a name component longer than the file system allows
            raise WorkspaceFileNotFoundError(
                f"file not found: {_shown(text)} ({exc.strerror or type(exc).__name__}); known files: {self._known()}"
            ) from None

    def _resolve(self, text: str) -> Path:
        pure = PurePosixPath(text)
        if pure.is_absolute() or re.match(r"^[A-Za-z]:", text) or text.startswith("~"):
            raise WorkspaceError(
                f"absolute paths are not allowed: {_shown(text)}; use a workspace file name such as "
                f"{self._example()} (known files: {self._known()})"
            )
        if ".." in pure.parts:
            raise WorkspaceError(
                f"path escapes the workspace: {_shown(text)}; use a workspace file name (known files: {self._known()})"
            )
        if any(part.startswith(".") for part in pure.parts):
            # Internal files (``.thread_id``) are not workspace files: ``files()`` never lists them.
            raise WorkspaceFileNotFoundError(f"file not found: {_shown(text)}; known files: {self._known()}")
        base = self.root.resolve()
        candidate = self.root / pure
        if candidate.is_symlink() or any(p.is_symlink() for p in candidate.parents if _inside(p, self.root)):
            target = candidate.resolve()
            if not _inside(target, base):
                raise WorkspaceError(f"path leads outside the workspace: {_shown(text)} (a link out of the workspace)")
        if candidate.is_file():
            resolved = candidate.resolve()
            if not _inside(resolved, base):  # e.g. the thread folder itself replaced by a link
                raise WorkspaceError(f"path leads outside the workspace: {_shown(text)}")
            return resolved
        if candidate.is_dir():
            raise WorkspaceFileNotFoundError(f"not a file: {_shown(text)} is a folder; known files: {self._known()}")
        if len(pure.parts) <= 2:
            # The model dropped or changed the folder ("ab12cd34.png", "images/ab12cd34.png").
            same = [n for n in self.files() if PurePosixPath(n).name == pure.name]
            if len(same) == 1:
                return self._resolve(same[0])
        raise WorkspaceFileNotFoundError(f"file not found: {_shown(text)}; known files: {self._known()}")

    def name_of(self, path: str | os.PathLike[str]) -> str:
        """The workspace name of an absolute ``path`` inside this workspace."""
        p = Path(path).resolve()
        base = self.root.resolve()
        if not _inside(p, base):
            raise WorkspaceError(f"path leads outside the workspace: {path}")
        return p.relative_to(base).as_posix()

    def new_file(self, modality: str = "image", suffix: str | None = None) -> tuple[str, Path]:
        """Reserve a fresh ``{folder}/{8 hex}.{ext}`` name for a tool's output: ``(name, path)``.

        The folder is created; the file is not. Tools write their result to ``path`` and answer with
        ``name`` (GPT4Tools' ``Result saved as …`` convention).
        """
        folder, ext = FOLDERS.get(modality, (modality, suffix or ""))
        if not re.fullmatch(r"[a-z0-9_]+", folder):
            raise WorkspaceError(f"invalid workspace folder {folder!r} for modality {modality!r}")
        ext = suffix if suffix is not None else ext
        if ext and not re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext):
            raise WorkspaceError(f"invalid file extension {ext!r}")
        with self._lock:
            self._ensure_root()
            (self.root / folder).mkdir(exist_ok=True)
        while True:
            name = f"{folder}/{uuid.uuid4().hex[:8]}{ext}"
            path = self.root / name
            try:
                # O_EXCL creation reserves the name atomically: two concurrent tool calls (or two
                # processes) never get the same one.
                path.touch(exist_ok=False)
            except FileExistsError:
                continue
            return name, path

    # -- attachments -------------------------------------------------------------------------------
    def save(self, source: Any, modality: str | None = None) -> StoredFile:
        """Store an attachment under a GPT4Tools name and return it.

        ``source``: a path, bytes, a PIL image or a numpy array (a text attachment may be a str when
        ``modality="text"``). ``modality`` is inferred from the file when omitted.

        Raises:
            WorkspaceError: unknown modality, unreadable or unsupported file.
        """
        if isinstance(source, (str, os.PathLike)) and modality != "text":
            p = Path(source).expanduser()
            if p.is_dir():
                raise WorkspaceError(f"cannot attach {source}: it is a folder, not a file")
            if not p.is_file():
                raise WorkspaceError(f"attachment not found: {source} (no such file)")
            source = p
        if modality is None:
            modality = infer_modality_of(source)
        if modality not in FOLDERS:
            raise WorkspaceError(f"unknown modality {modality!r} for attachment {describe_source(source)}; "
                                 f"known: {', '.join(FOLDERS)}")
        name, path = self.new_file(modality)
        try:
            WRITERS[modality](source, path)
        except WorkspaceError:
            path.unlink(missing_ok=True)
            raise
        except Exception as exc:  # decoder errors of PIL / soundfile / av / numpy
            path.unlink(missing_ok=True)
            raise WorkspaceError(
                f"cannot store {modality} attachment {describe_source(source)}: {type(exc).__name__}: {exc}"
            ) from exc
        check_loadable(path, modality, source)
        return StoredFile(name=name, path=path.resolve(), modality=modality)

    # -- helpers -----------------------------------------------------------------------------------
    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / _THREAD_MARKER
        if not marker.exists():
            marker.write_text(self.thread_id, encoding="utf-8")

    def _known(self) -> str:
        files = self.files()
        if not files:
            return "none"
        shown = files[-20:]  # the most recent names are the useful ones; keep the message short
        more = f" (+{len(files) - len(shown)} more)" if len(files) > len(shown) else ""
        return ", ".join(shown) + more

    def _example(self) -> str:
        files = self.files()
        return files[0] if files else "image/ab12cd34.png"

    def __repr__(self) -> str:
        return f"ThreadWorkspace({self.thread_id!r}, {str(self.root)!r})"


_QUOTES = "\"'`"
MAX_NAME_CHARS = 1024


def unquote(text: str) -> str:
    """``text`` stripped of spaces and of matching surrounding quote pairs (``"…"``, ``'…'``,
    backticks), symmetrically: an unmatched quote stays (``it's.png`` keeps its apostrophe)."""
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _bad_name(text: str) -> str | None:
    """Why ``text`` cannot be a workspace name, or None (checked before touching the file system)."""
    if len(text) > MAX_NAME_CHARS:
        return f"{len(text)} characters, the limit is {MAX_NAME_CHARS}"
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        return "it contains control characters"
    if "\ufffd" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return "it contains bytes that are not valid UTF-8"
    return None


def _shown(text: str, limit: int = 120) -> str:
    """A model-written name as it may appear in an observation: escaped and capped."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False


