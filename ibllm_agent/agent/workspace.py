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
the model was trained with), and stored as RGB PNG.

``ThreadWorkspace.resolve`` is the one gate every tool path goes through: absolute paths, ``..``,
symlinks that lead out of the thread folder and names that do not exist raise typed errors whose
messages are written for the model to read ("file not found: image/abcd1234.png; known files: …").
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ibllm_agent.errors import WorkspaceError, WorkspaceFileNotFoundError
from ibllm_agent.media.formats import extension_modality

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
_MAX_SIDE = 512
_MULTIPLE = 64


def gpt4tools_image_size(width: int, height: int) -> tuple[int, int]:
    """The GPT4Tools upload size: scale so the longer side is 512, round each side to a multiple of 64.

    Small images are scaled up as in the reference (the detectors and SD tools expect ~512 px).
    A side never rounds below 64 (a 1000x20 strip would otherwise become 0 px high).
    """
    ratio = min(_MAX_SIDE / width, _MAX_SIDE / height)
    w, h = round(width * ratio), round(height * ratio)
    w = max(_MULTIPLE, int(round(w / _MULTIPLE)) * _MULTIPLE)
    h = max(_MULTIPLE, int(round(h / _MULTIPLE)) * _MULTIPLE)
    return w, h


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
            modality = _infer_modality(source)
        if modality not in FOLDERS:
            raise WorkspaceError(f"unknown modality {modality!r} for attachment {_describe(source)}; "
                                 f"known: {', '.join(FOLDERS)}")
        name, path = self.new_file(modality)
        try:
            _WRITERS[modality](source, path)
        except WorkspaceError:
            path.unlink(missing_ok=True)
            raise
        except Exception as exc:  # decoder errors of PIL / soundfile / av / numpy
            path.unlink(missing_ok=True)
            raise WorkspaceError(
                f"cannot store {modality} attachment {_describe(source)}: {type(exc).__name__}: {exc}"
            ) from exc
        _check_loadable(path, modality, source)
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


def _check_loadable(path: Path, modality: str, source: Any) -> None:
    """Reject (and remove) a stored file the model's loader cannot read.

    The model re-reads a thread's latest attachments on every later turn that brings none, so a file
    that stores fine but does not load (an 8-bit "depth" PNG, an undecodable video stream) would make
    every later turn of the thread fail. Images and text are fully decoded by their writers already.
    """
    if modality in ("image", "text"):
        return
    try:
        from ibllm_agent import media
    except ImportError:  # media package absent in a trimmed install: nothing to check against
        return
    from ibllm_agent.errors import IbllmError

    try:
        media.load(path, modality)
    except IbllmError as exc:
        path.unlink(missing_ok=True)
        raise WorkspaceError(f"cannot use {modality} attachment {_describe(source)}: {exc}") from exc


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


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _infer_modality(source: Any) -> str:
    """Modality of an attachment: the media package's detector, else the file extension."""
    try:
        from ibllm_agent.media import infer_modality
    except ImportError:  # the loaders' dependencies absent in a trimmed install: extensions only
        infer_modality = None
    if infer_modality is not None:
        try:
            found = infer_modality(source)
        except Exception:
            found = None
        if found:
            return str(found)
    if isinstance(source, Path) and extension_modality(source) not in (None, "array"):
        return str(extension_modality(source))
    try:
        from PIL import Image

        if isinstance(source, Image.Image):
            return "image"
    except ImportError:
        pass
    raise WorkspaceError(f"cannot tell the modality of attachment {_describe(source)}; pass modality=")


def _as_file(source: Any, suffix: str) -> tuple[Path, bool]:
    """A path for ``source`` (bytes go to a temporary file); second value: delete it afterwards."""
    if isinstance(source, Path):
        return source, False
    if isinstance(source, (bytes, bytearray)):
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(source))
        return Path(tmp), True
    raise WorkspaceError(f"unsupported attachment source {_describe(source)}: pass a path or bytes")


def _open_image(source: Any, from_array: Callable[[Any], Any]) -> Any:
    """A loaded PIL image from a PIL image, encoded bytes or a path; arrays go through ``from_array``."""
    from PIL import Image

    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (bytes, bytearray)):
        img = Image.open(io.BytesIO(bytes(source)))
    elif isinstance(source, Path):
        img = Image.open(source)
    else:
        img = from_array(source)
    img.load()
    return img


def _rgb_from_array(source: Any) -> Any:
    import numpy as np
    from PIL import Image

    arr = np.asarray(source)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr.squeeze())


def _write_image(source: Any, dest: Path) -> None:
    from PIL import ImageOps

    img = _open_image(source, _rgb_from_array)
    img = ImageOps.exif_transpose(img).convert("RGB")
    img = img.resize(gpt4tools_image_size(*img.size))
    img.save(dest, "PNG")


def _write_sensor_image(source: Any, dest: Path) -> None:
    # Depth / thermal maps keep their resolution and bit depth (no GPT4Tools resize, no RGB).
    def as_is(array: Any) -> Any:
        import numpy as np
        from PIL import Image

        return Image.fromarray(np.asarray(array).squeeze())

    _open_image(source, as_is).save(dest, "PNG")


def _write_audio(source: Any, dest: Path) -> None:
    import soundfile as sf

    path, tmp = _as_file(source, ".audio")
    try:
        if path.suffix.lower() == ".wav":
            sf.info(str(path))  # validates; raises on a corrupt file
            shutil.copyfile(path, dest)
            return
        try:
            data, rate = sf.read(str(path), always_2d=True)  # [frames, channels]
        except Exception:
            # Formats libsndfile cannot read (m4a/aac): decode with torchcodec (FFmpeg).
            from torchcodec.decoders import AudioDecoder

            samples = AudioDecoder(str(path)).get_all_samples()
            data, rate = samples.data.numpy().T, int(samples.sample_rate)  # [C, N] -> [N, C]
        if len(data) == 0:
            raise WorkspaceError(f"audio attachment {_describe(source)} is empty (0 samples)")
        sf.write(str(dest), data, rate, format="WAV", subtype="PCM_16")
    finally:
        if tmp:
            path.unlink(missing_ok=True)


def _write_video(source: Any, dest: Path) -> None:
    import av

    path, tmp = _as_file(source, ".video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise WorkspaceError(f"video attachment {_describe(source)} has no video stream")
            fmt = container.format.name
        if "mp4" in fmt.split(","):
            shutil.copyfile(path, dest)
            return
        _transcode_mp4(path, dest)
    finally:
        if tmp:
            path.unlink(missing_ok=True)


def _transcode_mp4(src: Path, dest: Path) -> None:
    """Re-encode a non-MP4 video (avi/webm/mkv/mov) into MP4 so every video has one container."""
    import av

    with av.open(str(src)) as inp, av.open(str(dest), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or 25
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        vout = out.add_stream(codec, rate=rate)
        vout.width = vin.codec_context.width - vin.codec_context.width % 2
        vout.height = vin.codec_context.height - vin.codec_context.height % 2
        vout.pix_fmt = "yuv420p"
        for frame in inp.decode(vin):
            frame = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
            frame.pts = None
            for packet in vout.encode(frame):
                out.mux(packet)
        for packet in vout.encode():
            out.mux(packet)


def _write_array(source: Any, dest: Path, *, min_cols: int, what: str) -> None:
    import numpy as np

    if isinstance(source, Path) and source.suffix.lower() == ".npy":
        arr = np.load(source, allow_pickle=False)
    elif isinstance(source, (bytes, bytearray)):
        arr = np.load(io.BytesIO(bytes(source)), allow_pickle=False)
    elif isinstance(source, Path):
        arr = None
    else:
        arr = np.asarray(source)
    if arr is None:
        # Other point formats (.ply/.pts/.xyz/.obj/.pt): the media package's reader gives the raw
        # coordinates [N, 3] (no normalisation or resampling: the model's loader does that later).
        from ibllm_agent.media.limits import MediaLimits
        from ibllm_agent.media.point import read_points

        arr = read_points(source, MediaLimits()).cpu().numpy()
    if arr.ndim != 2 or arr.shape[1] < min_cols or arr.shape[0] < 1:
        raise WorkspaceError(f"{what} attachment {_describe(source)} has shape {tuple(arr.shape)}; "
                             f"expected [N, {min_cols}+] with N >= 1")
    if not np.isfinite(arr).all():
        raise WorkspaceError(f"{what} attachment {_describe(source)} contains NaN or infinite values")
    np.save(dest, arr.astype(np.float32), allow_pickle=False)


def _write_imu(source: Any, dest: Path) -> None:
    import numpy as np

    arr = np.load(source if isinstance(source, Path) else io.BytesIO(bytes(source)), allow_pickle=False) \
        if isinstance(source, (Path, bytes, bytearray)) else np.asarray(source)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise WorkspaceError(f"IMU attachment {_describe(source)} must be a finite 2-D array, got shape "
                             f"{tuple(arr.shape)}")
    np.save(dest, arr.astype(np.float32), allow_pickle=False)


def _write_text(source: Any, dest: Path) -> None:
    if isinstance(source, Path):
        text = source.read_text(encoding="utf-8")
    elif isinstance(source, (bytes, bytearray)):
        text = bytes(source).decode("utf-8")
    else:
        text = str(source)
    dest.write_text(text, encoding="utf-8")


_WRITERS = {
    "image": _write_image,
    "audio": _write_audio,
    "video": _write_video,
    "point": lambda s, d: _write_array(s, d, min_cols=3, what="point cloud"),
    "depth": _write_sensor_image,
    "thermal": _write_sensor_image,
    "imu": _write_imu,
    "text": _write_text,
}
