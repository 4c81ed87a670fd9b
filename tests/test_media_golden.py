"""Golden equality: every file in ../shared/golden against ibllm_agent.media (max abs ≤ 1e-4,
text ids and decoded video frames exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ibllm_agent import media
from ibllm_agent.media.video import decode_video_clips, frames_to_tensor

FLOAT_GOLDENS = [
    "vision__dog_image.npy", "vision__car_image.npy", "vision__bird_image.npy", "vision__girl.npy",
    "audio__dog_audio.npy", "audio__car_audio.npy", "audio__bird_audio.npy", "audio__girl_bgm.npy",
    "point__airplane.npy", "point__car.npy",
    "video__clip_landscape.npy",
]  # fmt: skip
TEXT_GOLDENS = ["text__a_dog.npy", "text__a_car.npy", "text__a_bird.npy", "text__a_photo_of_a_cat_sitting_on_a_sofa.npy"]
FRAME_GOLDENS = ["videoframes__clip_landscape.npy", "videoframes__clip_portrait.npy"]
OTHER_GOLDENS = ["video__clip_portrait__first_clip.npy", "text__batch4.npy"]
MODALITY = {"vision": "image", "audio": "audio", "point": "point", "video": "video"}


def _index(golden_dir):
    return json.loads((golden_dir / "index.json").read_text())


def test_every_golden_file_is_covered(golden_dir):
    outputs = {k for k in _index(golden_dir) if not k.startswith("media/")}
    assert outputs == set(FLOAT_GOLDENS + TEXT_GOLDENS + FRAME_GOLDENS + OTHER_GOLDENS)


@pytest.mark.parametrize("name", FLOAT_GOLDENS)
def test_float_golden(golden_dir, name):
    entry = _index(golden_dir)[name]
    want = np.load(golden_dir / name)[0]
    source = golden_dir / entry["source"]
    modality = MODALITY[name.split("__")[0]]
    assert media.infer_modality(source) == modality
    got = media.load(source, modality)
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    assert np.abs(got.numpy() - want).max() <= 1e-4


@pytest.mark.parametrize("name", TEXT_GOLDENS)
def test_text_golden(golden_dir, name):
    entry = _index(golden_dir)[name]
    got = media.load(entry["text"], "text")
    assert got.dtype == torch.int64 and got.shape == (77,)
    assert got.tolist() == np.load(golden_dir / name)[0].tolist()
    assert [i for i in got.tolist() if i] == entry["nonzero_ids"]


def test_text_batch_golden(golden_dir):
    entry = _index(golden_dir)["text__batch4.npy"]
    got = media.load_batch(entry["texts"], "text")
    assert got.shape == (4, 77)
    assert (got.numpy() == np.load(golden_dir / "text__batch4.npy")).all()


def test_portrait_video_golden(golden_dir):
    """Short-video rule: 5 identical clips from 0; the golden holds the first clip's 3 crops."""
    want = np.load(golden_dir / "video__clip_portrait__first_clip.npy")[0]
    got = media.load(golden_dir / "media/clip_portrait.mp4", "video")
    assert got.shape == (15, 3, 2, 224, 224)
    assert np.abs(got[0:3].numpy() - want).max() <= 1e-4
    for clip in range(1, 5):
        assert torch.equal(got[3 * clip : 3 * clip + 3], got[0:3])


@pytest.mark.parametrize("name", FRAME_GOLDENS)
def test_video_frames_golden(golden_dir, name):
    entry = _index(golden_dir)[name]
    video_name = {"videoframes__clip_landscape.npy": "video__clip_landscape.npy",
                  "videoframes__clip_portrait.npy": "video__clip_portrait__first_clip.npy"}[name]
    video_entry = _index(golden_dir)[video_name]
    decoded = decode_video_clips(golden_dir / entry["source"], media.MediaLimits())
    want = np.load(golden_dir / name)
    assert decoded.frames.dtype == torch.uint8
    assert tuple(decoded.frames.shape) == want.shape
    assert (decoded.frames.numpy() == want).all()
    assert decoded.frames_per_clip == video_entry["frames_decoded_per_clip"]
    assert [str(s) for s, _ in decoded.clip_times] == video_entry["clip_start_seconds_exact"]
    assert [str(e) for _, e in decoded.clip_times] == video_entry["clip_end_seconds_exact"]
    # the float pipeline from the golden frames alone reproduces the golden floats
    if "landscape" in name:
        floats = frames_to_tensor(torch.from_numpy(want))
        assert np.abs(floats.numpy() - np.load(golden_dir / "video__clip_landscape.npy")[0]).max() <= 1e-4


@pytest.mark.parametrize("name", ["audio__dog_audio.npy", "audio__car_audio.npy", "audio__bird_audio.npy", "audio__girl_bgm.npy"])
def test_audio_clip_times_match_sampler(golden_dir, name):
    from ibllm_agent.media.clips import constant_clip_times

    entry = _index(golden_dir)[name]
    times = constant_clip_times(float(entry["duration_seconds_passed_to_sampler"]), 2, 3)
    assert [str(s) for s, _ in times] == entry["clip_start_seconds_exact"]
    assert [str(e) for _, e in times] == entry["clip_end_seconds_exact"]
    assert [[int(s * 16000), int(e * 16000)] for s, e in times] == entry["clip_sample_ranges_at_16k"]


def test_audio_inplace_leak_quirk_is_reproduced(golden_dir):
    """Copying each clip before the mean subtraction (the 'clean' variant) must NOT match the golden
    for car_audio (overlapping clips), proving the in-place leak is what we reproduce."""
    import torchaudio

    from ibllm_agent.media.audio import decode_audio, waveform_to_fbank_clips

    wave, rate = decode_audio(golden_dir / "media/car_audio.wav", media.MediaLimits())
    wave16 = torchaudio.functional.resample(wave, rate, 16000)
    want = np.load(golden_dir / "audio__car_audio.npy")[0]
    leaky = waveform_to_fbank_clips(wave16.clone(), 16000)
    assert np.abs(leaky.numpy() - want).max() <= 1e-4
    # clean variant: every clip computed from its own copy, so no mean shift leaks between clips
    ranges = _index(golden_dir)["audio__car_audio.npy"]["clip_sample_ranges_at_16k"]
    clean = torch.stack([waveform_to_fbank_clips(wave16[:, a:b].clone(), 16000, clips=1)[0] for a, b in ranges])
    assert torch.equal(clean[0], leaky[0])  # the first clip is never affected
    assert np.abs(clean.numpy() - want).max() > 1e-3
