"""Speech to text with openai-whisper: the ``Transcribe Speech From Audio`` tool and the speech expert.

Audio (any file ``ibllm_agent.media.audio.decode_audio`` reads — WAV/FLAC/MP3/…, and the audio track
of a video through PyAV) is mixed down to mono 16 kHz and cut into Whisper's fixed 30 s windows;
every window is transcribed (batched through ``whisper.decode``), so long recordings come out in full,
not only their first 30 s. Each window's timestamp tokens become segments with absolute times.

- Language: given (``"en"`` or ``"english"``; unknown codes raise ``UnknownLanguageError``) or
  detected once on the loudest window (multilingual checkpoints).
- Silence: an empty or silent recording (peak below ``silence_peak``) gives an empty transcript
  without running the model; windows Whisper itself marks as no-speech are dropped.
- Length: longer than ``SpeechSettings.max_duration_s`` → ``MediaTooLargeError`` before decoding all
  of it.
- Weights: the openai-whisper checkpoint ``<weights_dir>/whisper/<size>.pt`` (registry entries
  ``whisper_tiny`` … ``whisper_turbo``); missing → ``MissingWeightError`` naming
  ``ibllm-agent download whisper_<size>``.
- Device/dtype: from the Settings; Whisper computes in fp16 (CUDA, when the dtype is fp16/bf16 —
  its decoder has no bf16 path) or fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ibllm_agent.errors import ConfigError, UnknownLanguageError

__all__ = [
    "SIZES",
    "TOOL_NAME",
    "Segment",
    "SpeechRecognizer",
    "SpeechSettings",
    "Transcript",
    "console_progress",
    "load_speech",
    "model_key",
    "normalize_language",
    "resolve_size",
    "observation",
    "speech_tool",
    "weight_name",
]

SAMPLE_RATE = 16_000
WINDOW_S = 30  # Whisper's fixed input window (whisper.audio.CHUNK_LENGTH)
SIZES = ("tiny", "base", "small", "medium", "large-v3", "turbo")
# "auto": the first of these whose checkpoint is in the weights dir (the largest present, like SAM).
AUTO_ORDER = ("turbo", "large-v3", "medium", "small", "base", "tiny")

Progress = Callable[[int, int], None]  # (windows done, windows in total)


@dataclass(frozen=True)
class SpeechSettings:
    """How the recogniser runs.

    size: the Whisper checkpoint (``tiny`` … ``large-v3``, ``turbo``; ``auto`` = the largest one in the
    weights dir, in the order turbo, large-v3, medium, small, base, tiny). max_duration_s: longer audio is
    refused. batch_size: 30 s windows decoded together. silence_peak: a recording whose absolute peak
    stays below this is silent (empty transcript, no model call). no_speech_threshold /
    logprob_threshold: Whisper's own rule for dropping a window as silence (no-speech probability
    above the first *and* average log-probability below the second). sample_len: tokens generated
    per window at most (default: half the text context, 224).
    """

    size: str = "auto"
    max_duration_s: float = 3 * 3600.0
    batch_size: int = 4
    silence_peak: float = 1e-3
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    sample_len: int | None = None

    def __post_init__(self) -> None:
        if self.size not in (*SIZES, "auto"):
            raise ConfigError(f"unknown Whisper size {self.size!r}; use auto or one of {', '.join(SIZES)}")
        if self.max_duration_s <= 0 or self.batch_size < 1:
            raise ConfigError("SpeechSettings: max_duration_s must be > 0 and batch_size >= 1")


@dataclass
class Segment:
    """A stretch of recognised speech, times in seconds from the start of the recording."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """The result of one transcription.

    ``windows``: 30 s windows the recording was cut into; ``decoded``: how many went through the
    model (silent ones are skipped).
    """

    text: str
    language: str | None
    duration: float
    segments: list[Segment] = field(default_factory=list)
    windows: int = 0
    decoded: int = 0

    def to_artifact(self) -> dict[str, Any]:
        """A JSON-ready dict (the tool's artifact)."""
        return asdict(self)


def weight_name(size: str) -> str:
    """Registry entry of a Whisper size: ``large-v3`` → ``whisper_large_v3``."""
    return f"whisper_{size.replace('-', '_')}"


def model_key(settings: SpeechSettings) -> str:
    """The model-pool key of the recogniser ``settings`` load (``whisper`` for ``auto``)."""
    return "whisper" if settings.size == "auto" else weight_name(settings.size)


def resolve_size(size: str, app_settings: Any = None) -> str:
    """``auto`` → the first size of ``AUTO_ORDER`` whose checkpoint is present (``tiny`` when none is,
    so the missing-weight error names the smallest download); other sizes unchanged."""
    if size != "auto":
        return size
    from ibllm_agent.weights import missing_files

    return next((s for s in AUTO_ORDER if not missing_files(weight_name(s), app_settings)), "tiny")


def normalize_language(language: str | None) -> str | None:
    """``"en"`` / ``"English"`` / ``" EN "`` → ``"en"``; ``None``/``""``/``"auto"`` → ``None`` (detect).

    Raises ``UnknownLanguageError`` for anything Whisper has no token for."""
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    if language is None:
        return None
    key = language.strip().lower()
    if key in ("", "auto", "detect", "none"):
        return None
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise UnknownLanguageError(
        f"unknown language {language!r} for speech recognition; use a code such as en, de, zh "
        f"(known: {', '.join(sorted(LANGUAGES))}) or leave it empty to detect the language"
    )


def load_speech(source: Any, max_duration_s: float | None):
    """Any audio (or video with an audio track) → float32 numpy [N] mono at 16 kHz.

    Raises the media errors of ``decode_audio`` (``MediaTooLargeError`` past ``max_duration_s``,
    ``EmptyMediaError`` for a file without audio, ``UnreadableMediaError`` …)."""
    import numpy as np
    import torch
    import torchaudio

    from ibllm_agent.media.audio import decode_audio
    from ibllm_agent.media.errors import EmptyMediaError
    from ibllm_agent.media.limits import MediaLimits

    try:
        wave, rate = decode_audio(source, MediaLimits(max_duration_s=max_duration_s))  # [C, N]
    except EmptyMediaError as exc:
        if exc.reason == "audio has zero length":  # an empty recording says nothing: empty transcript
            return np.zeros(0, dtype=np.float32)
        raise  # e.g. a video without an audio track
    mono = wave.mean(dim=0, keepdim=True)
    if rate != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, orig_freq=rate, new_freq=SAMPLE_RATE)
    return mono[0].to(torch.float32).numpy()


class SpeechRecognizer:
    """A Whisper model plus the settings it runs with (see the module docstring).

    Build it from the weights dir (``from_weights``) or from a ready ``whisper.model.Whisper``
    (tests use a tiny random one: ``tiny_random``).
    """

    def __init__(self, model: Any, settings: SpeechSettings | None = None, *, fp16: bool = False):
        self.model = model
        self.settings = settings or SpeechSettings()
        self.fp16 = fp16

    @classmethod
    def from_weights(cls, settings: SpeechSettings | None = None, *, app_settings: Any = None,
                     device: Any = None, dtype: Any = None) -> SpeechRecognizer:
        """Load ``<weights_dir>/whisper/<size>.pt`` (``torch.load(weights_only=True)`` inside
        ``whisper.load_model``) onto the Settings' device."""
        import torch
        import whisper

        from ibllm_agent.config import get_settings, resolve_device, resolve_dtype
        from ibllm_agent.weights import require

        settings = settings or SpeechSettings()
        app = app_settings or get_settings()
        path = require(weight_name(resolve_size(settings.size, app)), app)
        dev = resolve_device(device if device is not None else app)
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype if dtype is not None else app, dev)
        model = whisper.load_model(str(path), device=dev)
        return cls(model, settings, fp16=dev.type == "cuda" and dt in (torch.float16, torch.bfloat16))

    @classmethod
    def tiny_random(cls, settings: SpeechSettings | None = None, *, seed: int = 0, device: str = "cpu",
                    n_mels: int = 80, n_text_ctx: int = 448) -> SpeechRecognizer:
        """A random-init multilingual Whisper with one 64-wide layer (tests, benchmarks; its
        transcripts are noise). The tokenizer is the real offline one. A small ``n_text_ctx`` bounds
        the tokens per window (half of it) for checkpoints loaded without ``SpeechSettings``."""
        import torch
        from whisper.model import ModelDimensions, Whisper

        torch.manual_seed(seed)
        dims = ModelDimensions(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                               n_vocab=51865, n_text_ctx=n_text_ctx, n_text_state=64, n_text_head=2, n_text_layer=1)
        model = Whisper(dims)
        with torch.no_grad():  # whisper leaves the decoder's positions uninitialised (torch.empty)
            model.decoder.positional_embedding.normal_(0.0, 0.02)
        return cls(model.to(device).eval(), settings)

    @property
    def size_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    # -- transcription -------------------------------------------------------------------------
    def transcribe(self, source: Any, language: str | None = None, *, progress: Progress | None = None) -> Transcript:
        """Transcribe a whole recording (path, bytes or ``(waveform, rate)``); see the module docstring."""
        lang = normalize_language(language)  # a bad code fails before any decoding
        audio = load_speech(source, self.settings.max_duration_s)
        return self.transcribe_array(audio, lang, progress=progress)

    def transcribe_array(self, audio: Any, language: str | None = None, *,
                         progress: Progress | None = None) -> Transcript:
        """Transcribe float32 mono 16 kHz samples ``audio`` [N]."""
        import numpy as np

        lang = normalize_language(language)
        self._tokenizer()  # (loads the cached encoding quietly, see _tokenizer)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = audio.size / SAMPLE_RATE
        if duration > self.settings.max_duration_s:
            from ibllm_agent.media.errors import MediaTooLargeError

            raise MediaTooLargeError("audio", f"audio lasts {duration:.1f} s, above max_duration_s="
                                     f"{self.settings.max_duration_s}", "audio")
        step = WINDOW_S * SAMPLE_RATE
        n = math.ceil(audio.size / step) if audio.size else 0
        windows = [audio[i * step : (i + 1) * step] for i in range(n)]
        speaking = [i for i, w in enumerate(windows) if w.size and float(np.abs(w).max()) >= self.settings.silence_peak]
        if progress:
            progress(n - len(speaking), n)  # silent windows are done already
        if not speaking:
            return Transcript("", lang, duration, [], n, 0)
        mels = self._mels([windows[i] for i in speaking])  # [W, n_mels, 3000]
        if lang is None and self.model.is_multilingual:
            loudest = max(range(len(speaking)), key=lambda k: float(np.abs(windows[speaking[k]]).max()))
            lang = self._detect(mels[loudest : loudest + 1])
        segments: list[Segment] = []
        done = n - len(speaking)
        for b in range(0, len(speaking), self.settings.batch_size):
            idx = speaking[b : b + self.settings.batch_size]
            results = self._decode(mels[b : b + len(idx)], lang)
            for i, result in zip(idx, results, strict=True):
                if (result.no_speech_prob > self.settings.no_speech_threshold
                        and result.avg_logprob < self.settings.logprob_threshold):
                    continue  # Whisper's own silence rule
                segments += self._segments(result.tokens, i * WINDOW_S, windows[i].size / SAMPLE_RATE)
            done += len(idx)
            if progress:
                progress(done, n)
        segments = [s for s in segments if s.text]
        text = " ".join(s.text for s in segments)
        return Transcript(text, lang, duration, segments, n, len(speaking))

    def _device(self):
        return next(self.model.parameters()).device

    def _mels(self, windows: list) -> Any:
        import torch
        import whisper

        out = []
        for w in windows:  # each padded to exactly 30 s → [n_mels, 3000]
            mel = whisper.log_mel_spectrogram(torch.from_numpy(w), n_mels=self.model.dims.n_mels)
            out.append(whisper.pad_or_trim(mel, whisper.audio.N_FRAMES))
        return torch.stack(out).to(self._device())

    def _detect(self, mel) -> str:
        import torch

        with torch.inference_mode():
            _, probs = self.model.detect_language(mel.half() if self.fp16 else mel)
        return max(probs[0], key=probs[0].get)

    def _decode(self, mels, lang: str | None) -> list:
        import whisper

        options = whisper.DecodingOptions(task="transcribe", language=lang, fp16=self.fp16,
                                          without_timestamps=False, sample_len=self.settings.sample_len)
        return whisper.decode(self.model, mels, options)

    def _segments(self, tokens: list[int], offset: float, length: float) -> list[Segment]:
        """Timestamp tokens (``<|t|>`` = 0.02 s steps) → segments shifted by the window start;
        text without timestamps becomes one segment over the window."""
        tok = self._tokenizer()
        begin = tok.timestamp_begin
        out: list[Segment] = []
        start: float | None = None
        last_end = 0.0
        text: list[int] = []

        def emit(s: float, e: float) -> None:
            words = tok.decode([t for t in text if t < tok.eot]).strip()
            s, e = min(max(s, 0.0), length), min(max(e, 0.0), length)
            if words:
                out.append(Segment(round(offset + s, 2), round(offset + max(e, s), 2), words))
            text.clear()

        for t in tokens:
            if t >= begin:
                ts = (t - begin) * 0.02
                if start is None:
                    if text:  # words before the first timestamp
                        emit(last_end, ts)
                    start = ts
                else:
                    emit(start, ts)
                    last_end, start = ts, None
            else:
                text.append(t)
        if text:
            emit(start if start is not None else last_end, length)
        return out

    def _tokenizer(self):
        import warnings

        from whisper.tokenizer import get_tokenizer

        if not hasattr(self, "_tok"):
            # whisper reads its vocabulary with an unclosed open(); the encoding is cached (lru_cache),
            # so silencing that one ResourceWarning here covers the later get_tokenizer calls of
            # whisper.decode / detect_language too.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                self._tok = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages)
        return self._tok


# -- the tool ---------------------------------------------------------------------------------------
TOOL_NAME = "Transcribe Speech From Audio"


def observation(transcript: Transcript) -> str:
    """The tool's observation text: the transcript, or a sentence saying nothing was recognised."""
    if not transcript.text:
        return "No speech was recognized in the audio."
    return transcript.text


def console_progress(desc: str = "transcribing") -> Progress:
    """A ``Progress`` callback drawing a tqdm bar (30 s windows) on stderr — the CLI's progress bar.
    Nothing is drawn for a recording of a single window."""
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if total <= 1:
            return
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, desc=desc, unit="window", leave=False)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def speech_tool(settings: SpeechSettings | None = None, *, loader: Callable[[str], Any] | None = None,
                progress: bool | None = None) -> Any:
    """The ``Transcribe Speech From Audio`` tool (``audio_path[, language]``).

    Its observation is the transcript; its artifact (``ToolMessage.artifact``) the
    ``Transcript.to_artifact()`` dict with language and segment timestamps. The Whisper model loads
    lazily into the agent's model pool (key ``whisper`` for size ``auto``, else ``whisper_<size>``)
    through ``loader(device)`` (default: ``SpeechRecognizer.from_weights``). ``progress``: draw a progress bar on stderr (default: when
    stderr is a terminal).
    """
    import sys

    from ibllm_agent.agent.registry import gpt4tools_tool

    settings = settings or SpeechSettings()
    show = sys.stderr.isatty() if progress is None else progress

    def load(device: str) -> SpeechRecognizer:
        return SpeechRecognizer.from_weights(settings, device=device)

    def run(recognizer: SpeechRecognizer, audio_path: str, language: str = "") -> tuple[str, dict]:
        transcript = recognizer.transcribe(audio_path, language or None,
                                           progress=console_progress() if show else None)
        return observation(transcript), transcript.to_artifact()

    return gpt4tools_tool(TOOL_NAME, run, model_key=model_key(settings), loader=loader or load,
                          response_format="content_and_artifact")
