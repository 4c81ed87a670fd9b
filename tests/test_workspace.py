"""Thread workspace: GPT4Tools names and resize, modality conversion, the path gate."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from ibllm_agent.agent.workspace import Workspace, gpt4tools_image_size, neutral_description
from ibllm_agent.errors import IbllmError, WorkspaceError, WorkspaceFileNotFoundError

NAME_RE = re.compile(r"^image/[0-9a-f]{8}\.png$")


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "root").thread("t1")


def _png(path, size=(640, 480), color=(200, 30, 40), mode="RGB"):
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


@pytest.mark.parametrize(
    "size,expected",
    [
        ((640, 480), (512, 384)),  # 512x384: both multiples of 64 already
        ((1000, 300), (512, 128)),  # 512 x 153.6 -> 154 -> round(2.41)=2 -> 128
        ((100, 100), (512, 512)),  # small images are scaled up, as in GPT4Tools
        ((333, 777), (192, 512)),  # 219.4 -> 219 -> round(3.42)=3 -> 192
        ((5000, 10), (512, 64)),  # never rounds a side to 0
    ],
)
def test_gpt4tools_size_rule(size, expected):
    assert gpt4tools_image_size(*size) == expected


def test_image_saved_under_gpt4tools_name_resized_rgb(ws, tmp_path):
    src = _png(tmp_path / "in.png", (1000, 300), mode="RGBA")
    stored = ws.save(src)
    assert stored.modality == "image"
    assert NAME_RE.match(stored.name), stored.name
    img = Image.open(stored.path)
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (512, 128)
    assert ws.files() == [stored.name]
    assert ws.resolve(stored.name) == stored.path


def test_image_from_bytes_and_pil(ws):
    buf = io.BytesIO()
    Image.new("L", (64, 32), 90).save(buf, "JPEG")
    a = ws.save(buf.getvalue(), "image")
    b = ws.save(Image.new("RGB", (10, 20)), "image")
    assert a.name != b.name
    assert Image.open(a.path).size == (512, 256)
    assert Image.open(b.path).size == (256, 512)


def test_audio_video_point_names_and_content(ws, tmp_path):
    import soundfile as sf

    wav = tmp_path / "a.flac"
    sf.write(wav, np.sin(np.linspace(0, 100, 8000)).astype(np.float32), 8000)
    audio = ws.save(wav)
    assert re.match(r"^audio/[0-9a-f]{8}\.wav$", audio.name)
    data, rate = sf.read(audio.path)
    assert rate == 8000 and len(data) == 8000

    pts = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float64)
    np.save(tmp_path / "cloud.npy", pts)
    cloud = ws.save(tmp_path / "cloud.npy", "point")
    assert re.match(r"^pointcloud/[0-9a-f]{8}\.npy$", cloud.name)
    back = np.load(cloud.path)
    assert back.dtype == np.float32 and np.allclose(back, pts, atol=1e-6)

    video = ws.save(_make_video(tmp_path / "clip.avi"), "video")
    assert re.match(r"^video/[0-9a-f]{8}\.mp4$", video.name)
    import av

    with av.open(str(video.path)) as c:
        assert "mp4" in c.format.name and len(list(c.decode(video=0))) == 4


def _make_video(path, frames=4):
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_bad_attachments_are_typed_and_leave_nothing(ws, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(WorkspaceError, match="broken.png"):
        ws.save(bad)
    with pytest.raises(WorkspaceError, match="no such file"):
        ws.save(tmp_path / "missing.png")
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((4, 3), np.nan))
    with pytest.raises(WorkspaceError, match="NaN"):
        ws.save(nan, "point")
    with pytest.raises(WorkspaceError, match="unknown modality"):
        ws.save(b"abc", "smell")
    assert ws.files() == []  # failed saves do not leave reserved names behind


def test_resolve_rejects_escapes_and_unknown_names(ws, tmp_path):
    stored = ws.save(_png(tmp_path / "x.png"))
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    with pytest.raises(WorkspaceError, match="absolute paths are not allowed"):
        ws.resolve(str(outside))
    with pytest.raises(WorkspaceError, match="escapes the workspace"):
        ws.resolve("image/../../../secret.txt")
    with pytest.raises(WorkspaceError, match="escapes"):
        ws.resolve("..\\..\\secret.txt")
    os.symlink(outside, ws.root / "image" / "link.png")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.resolve("image/link.png")
    (ws.root / "image" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.resolve("image/dirlink/secret.txt")
    with pytest.raises(WorkspaceFileNotFoundError) as info:
        ws.resolve("image/abcd1234.png")
    msg = str(info.value)
    assert msg.startswith("file not found: image/abcd1234.png; known files: ")
    assert stored.name in msg and "link.png" not in msg
    assert isinstance(info.value, IbllmError)


def test_attachment_the_model_cannot_load_is_refused_at_attach_time(ws, tmp_path):
    # An 8-bit PNG stores fine as "depth" but the depth loader needs metric values; accepting it would
    # break every later turn of the thread (the model re-reads the latest attachments).
    rgb = _png(tmp_path / "photo.png")
    with pytest.raises(WorkspaceError, match="cannot use depth attachment .*photo.png.*no metric depth"):
        ws.save(rgb, "depth")
    assert ws.files() == []
    depth16 = tmp_path / "d.png"
    Image.fromarray(np.full((32, 32), 1500, dtype=np.uint16)).save(depth16)
    assert ws.save(depth16, "depth").name.startswith("depth/")


def test_attaching_a_folder_says_so(ws, tmp_path):
    with pytest.raises(WorkspaceError, match="it is a folder, not a file"):
        ws.save(tmp_path)
    assert ws.files() == []


def test_resolve_refuses_internal_hidden_files(ws, tmp_path):
    ws.save(_png(tmp_path / "x.png"))
    assert (ws.root / ".thread_id").is_file()  # the listing marker exists, but is no tool input
    _png(ws.root / "image" / ".hidden.png")
    for name in (".thread_id", "./.thread_id", "image/.hidden.png"):
        with pytest.raises(WorkspaceFileNotFoundError, match="file not found"):
            ws.resolve(name)
    assert not any("/." in f or f.startswith(".") for f in ws.files())  # listing and gate agree


def test_resolve_tolerates_model_spellings(ws, tmp_path):
    stored = ws.save(_png(tmp_path / "x.png"))
    base = stored.name.split("/")[1]
    assert ws.resolve(f' "{stored.name}" ') == stored.path
    assert ws.resolve(base) == stored.path  # bare name, as in GPT4Tools training data
    assert ws.resolve(f"images/{base}") == stored.path
    with pytest.raises(WorkspaceFileNotFoundError):
        ws.resolve("")


def test_new_file_unique_and_inside(ws):
    names = {ws.new_file("image")[0] for _ in range(50)}
    assert len(names) == 50 and all(NAME_RE.match(n) for n in names)
    name, path = ws.new_file("image")
    assert path.parent == ws.root / "image" and path.exists()
    with pytest.raises(WorkspaceError):
        ws.new_file("image", suffix="/../x")


def test_threads_are_separate_and_deletable(tmp_path):
    root = Workspace(tmp_path / "root")
    a, b = root.thread("alice"), root.thread("bob/../../etc")  # unsafe id -> hashed folder
    sa = a.save(_png(tmp_path / "a.png"))
    b.save(_png(tmp_path / "b.png"))
    assert b.root.parent == root.threads_dir and b.root.name.startswith("t-")
    with pytest.raises(WorkspaceFileNotFoundError):
        b.resolve(sa.name)
    assert root.threads() == ["alice", "bob/../../etc"]
    assert root.delete_thread("alice") and not a.root.exists()
    assert root.threads() == ["bob/../../etc"]
    assert not root.delete_thread("alice")


def test_neutral_description():
    assert neutral_description("image") == "An image provided by the user."
    assert neutral_description("point") == "A point cloud provided by the user."


def test_ply_point_cloud_stored_as_raw_npy(ws, tmp_path):
    pts = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    ply = tmp_path / "chair.ply"
    header = "ply\nformat ascii 1.0\nelement vertex 30\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    ply.write_text(header + "".join(" ".join(f"{v:.6f}" for v in p) + "\n" for p in pts))
    stored = ws.save(ply)
    assert stored.modality == "point" and stored.name.startswith("pointcloud/")
    np.testing.assert_allclose(np.load(stored.path), pts, atol=1e-5)  # raw coordinates, not resampled
