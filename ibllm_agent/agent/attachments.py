"""Attachment converters: any source (path, bytes, PIL image, array) → the stored workspace file.

One writer per modality (``WRITERS``): images are resized by the GPT4Tools upload rule
(``gpt4tools_image_size``) and stored as RGB PNG, audio as 16-bit WAV, video as MP4 (transcoded when
needed), point clouds / IMU as float32 NPY, depth / thermal maps as PNG at their own bit depth, text as
UTF-8. ``check_loadable`` then rejects a stored file the model's media loader cannot read.
Every failure is a ``WorkspaceError`` naming the attachment.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ibllm_agent.errors import WorkspaceError
from ibllm_agent.media.formats import extension_modality

__all__ = ["WRITERS", "check_loadable", "describe_source", "gpt4tools_image_size", "infer_modality_of"]

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


def check_loadable(path: Path, modality: str, source: Any) -> None:
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
        raise WorkspaceError(f"cannot use {modality} attachment {describe_source(source)}: {exc}") from exc


def describe_source(source: Any) -> str:
    """An attachment as error messages name it: its path, or its size / type."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def infer_modality_of(source: Any) -> str:
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
    raise WorkspaceError(f"cannot tell the modality of attachment {describe_source(source)}; pass modality=")


def _as_file(source: Any, suffix: str) -> tuple[Path, bool]:
    """A path for ``source`` (bytes go to a temporary file); second value: delete it afterwards."""
    if isinstance(source, Path):
        return source, False
    if isinstance(source, (bytes, bytearray)):
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(source))
        return Path(tmp), True
    raise WorkspaceError(f"unsupported attachment source {describe_source(source)}: pass a path or bytes")


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
            raise WorkspaceError(f"audio attachment {describe_source(source)} is empty (0 samples)")
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
                raise WorkspaceError(f"video attachment {describe_source(source)} has no video stream")
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
        raise WorkspaceError(f"{what} attachment {describe_source(source)} has shape {tuple(arr.shape)}; "
                             f"expected [N, {min_cols}+] with N >= 1")
    if not np.isfinite(arr).all():
        raise WorkspaceError(f"{what} attachment {describe_source(source)} contains NaN or infinite values")
    np.save(dest, arr.astype(np.float32), allow_pickle=False)


def _write_imu(source: Any, dest: Path) -> None:
    import numpy as np

    arr = np.load(source if isinstance(source, Path) else io.BytesIO(bytes(source)), allow_pickle=False) \
        if isinstance(source, (Path, bytes, bytearray)) else np.asarray(source)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise WorkspaceError(f"IMU attachment {describe_source(source)} must be a finite 2-D array, "
                             f"got shape {tuple(arr.shape)}")
    np.save(dest, arr.astype(np.float32), allow_pickle=False)


def _write_text(source: Any, dest: Path) -> None:
    if isinstance(source, Path):
        text = source.read_text(encoding="utf-8")
    elif isinstance(source, (bytes, bytearray)):
        text = bytes(source).decode("utf-8")
    else:
        text = str(source)
    dest.write_text(text, encoding="utf-8")


WRITERS = {
    "image": _write_image,
    "audio": _write_audio,
    "video": _write_video,
    "point": lambda s, d: _write_array(s, d, min_cols=3, what="point cloud"),
    "depth": _write_sensor_image,
    "thermal": _write_sensor_image,
    "imu": _write_imu,
    "text": _write_text,
}
