"""Audio preprocessing, identical to the reference ``load_and_transform_audio_data``.

waveform float32 [C, N] in [-1, 1) → resample to 16 kHz (torchaudio sinc, default parameters) →
3 clips × 2 s (``clips.constant_clip_times`` on duration N/16000) → per clip: subtract the mean,
kaldi fbank (128 mel bins, 25 ms / 10 ms, hanning, htk_compat, no energy, dither 0), [128, frames],
zero-pad/crop to 204 frames → (x + 4.268) / 9.138  ⇒  float32 [3, 1, 128, 204].

Two reference quirks are reproduced on purpose (the golden outputs depend on them):
  (a) the mean is subtracted *in place on a view* of the whole waveform, so the shift leaks into the
      samples that later, overlapping clips see;
  (b) the mean is over all channels of the clip, but fbank then uses channel 0 only (no down-mix).

Decoding: soundfile (WAV/FLAC/OGG/MP3/AIFF…), PyAV as a fallback for other containers (m4a, aac,
audio tracks of videos). Sample values are float32 normalised like the legacy torchaudio backends.
"""

from __future__ import annotations

from typing import Any

from .clips import constant_clip_times
from .errors import (
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaTooLargeError,
    UnknownFormatError,
    UnreadableMediaError,
)
from .limits import MediaLimits
from .sources import describe, is_bytes, is_filelike, is_path, open_binary, short

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_LENGTH = 204
CLIP_DURATION = 2
CLIPS_PER_AUDIO = 3
FBANK_MEAN = -4.268
FBANK_STD = 9.138



def _check_duration(frames: int, rate: int, desc: str, limits: MediaLimits) -> None:
    if frames <= 0:
        raise EmptyMediaError(desc, "audio has zero length", "audio")
    if limits.max_duration_s is not None and frames / rate > limits.max_duration_s:
        raise MediaTooLargeError(
            desc, f"audio lasts {frames / rate:.1f} s, above max_duration_s={limits.max_duration_s}", "audio"
        )


def _decode_soundfile(handle, desc: str, limits: MediaLimits):
    """(float32 ndarray [C, N], rate) or None when libsndfile does not know the format."""
    import soundfile as sf

    try:
        info = sf.info(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    finally:
        if hasattr(handle, "seek"):
            handle.seek(0)
    _check_duration(int(info.frames), int(info.samplerate), desc, limits)
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)  # [N, C]
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"corrupt audio ({short(exc)})", "audio") from exc
    return data.T, int(rate)


def _decode_pyav(handle, desc: str, limits: MediaLimits):
    """(float32 ndarray [C, N], rate) via FFmpeg, for formats libsndfile cannot read."""
    import av
    import numpy as np

    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.audio:
                raise EmptyMediaError(desc, "no audio stream", "audio")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            if rate <= 0:
                raise UnreadableMediaError(desc, "audio stream has no sample rate", "audio")
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
                if limits.max_duration_s is not None and seconds > limits.max_duration_s:
                    raise MediaTooLargeError(
                        desc, f"audio lasts {seconds:.1f} s, above max_duration_s={limits.max_duration_s}", "audio"
                    )
            # Planar float32 keeps the channel layout: each chunk is [C, n].
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
            chunks, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray()
                    chunks.append(chunk)
                    total += chunk.shape[1]
                    if limits.max_duration_s is not None and total / rate > limits.max_duration_s:
                        raise MediaTooLargeError(
                            desc, f"audio is longer than max_duration_s={limits.max_duration_s}", "audio"
                        )
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except MediaError:  # (a ValueError: must not be re-wrapped below)
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"not a decodable audio file ({short(exc)})", "audio") from exc
    if not chunks:
        raise EmptyMediaError(desc, "audio has zero length", "audio")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def decode_audio(source: Any, limits: MediaLimits):
    """Any audio source → (float32 tensor [C, N], sample_rate).

    Raw waveforms come as ``(array, rate)``: float [N] or [C, N] in [-1, 1], or int16/int32 PCM
    (divided by 2^15 / 2^31 like the file decoders)."""
    import numpy as np
    import torch

    desc = describe(source)
    if isinstance(source, tuple) and len(source) == 2:
        wave, rate = source
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InvalidValuesError(desc, "sample rate must be a positive int", "audio")
        wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2:
            raise InvalidValuesError(desc, f"waveform must be [samples] or [channels, samples], got {tuple(wave.shape)}", "audio")
        _check_duration(int(wave.shape[1]), int(rate), desc, limits)
        pcm_scale = {torch.int16: 32768.0, torch.int32: 2147483648.0}.get(wave.dtype)
        if pcm_scale is not None:  # integer PCM → [-1, 1) the way soundfile/torchaudio scale it
            wave = wave.detach().cpu().to(torch.float32) / pcm_scale
        elif wave.is_floating_point():
            # Copy: the in-place mean subtraction (quirk a) must not modify the caller's array.
            wave = wave.detach().to(torch.float32, copy=True).cpu()
        else:
            raise InvalidValuesError(desc, f"waveform must be float in [-1, 1] or int16/int32 PCM, not {wave.dtype}", "audio")
        rate = int(rate)
    elif is_path(source) or is_bytes(source) or is_filelike(source):
        handle = open_binary(source, limits, "audio")
        decoded = _decode_soundfile(handle, desc, limits)
        if decoded is None:
            decoded = _decode_pyav(handle, desc, limits)
        data, rate = decoded
        _check_duration(int(data.shape[1]), rate, desc, limits)
        wave = torch.from_numpy(np.ascontiguousarray(data))
    else:
        raise UnknownFormatError(desc, "unsupported audio source (expected a path, bytes or (waveform, rate))", "audio")
    if wave.shape[0] == 0:
        raise EmptyMediaError(desc, "audio has no channels", "audio")
    if not torch.isfinite(wave).all():
        raise InvalidValuesError(desc, "waveform contains NaN or inf", "audio")
    return wave, rate


def waveform_to_fbank_clips(
    waveform,
    sample_rate: int,
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    target_length: int = TARGET_LENGTH,
    clip_duration: int = CLIP_DURATION,
    clips: int = CLIPS_PER_AUDIO,
):
    """float32 waveform [C, N] at ``sample_rate`` → normalised fbank clips [clips, 1, mel, target].

    NOTE: mutates ``waveform`` (quirk (a) of the reference). Pass a tensor you own.
    """
    import torch
    import torchaudio

    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    duration = waveform.size(1) / SAMPLE_RATE  # a float, as in the reference
    out = []
    for start, end in constant_clip_times(duration, clip_duration, clips):
        clip = waveform[:, int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]  # a view (quirk a)
        if clip.size(1) < 400:
            # Shorter than one 25 ms kaldi window: fbank cannot make a frame. Right-pad with zeros
            # (after the mean shift, like the padding the fbank gets later).
            clip = clip - clip.mean()
            clip = torch.nn.functional.pad(clip, (0, 400 - clip.size(1)))
        else:
            clip -= clip.mean()  # in place, over all channels (quirks a and b)
        fbank = torchaudio.compliance.kaldi.fbank(
            clip,  # kaldi reads channel 0 only (quirk b)
            htk_compat=True,
            sample_frequency=SAMPLE_RATE,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=num_mel_bins,
            dither=0.0,
            frame_length=25,
            frame_shift=10,
        ).transpose(0, 1)  # [mel, frames]
        pad = target_length - fbank.size(1)
        fbank = torch.nn.functional.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :target_length]
        out.append(((fbank - FBANK_MEAN) / FBANK_STD).unsqueeze(0))
    return torch.stack(out, dim=0)


def load_audio(source: Any, limits: MediaLimits):
    """Any audio source → float32 [3, 1, 128, 204]."""
    wave, rate = decode_audio(source, limits)
    return waveform_to_fbank_clips(wave, rate)
