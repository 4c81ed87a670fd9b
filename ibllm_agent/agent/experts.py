"""Expert context inside the agent: findings computed when a file is attached, kept with the thread.

``build_agent(experts=True)`` runs the paper's two experts on attachments — Whisper on audio
(``(recognized text: …)``) and the video object detector on video (``(detected object classes: …)``)
— with their models loaded lazily into the agent's ``ModelPool`` (the same pool keys as the
``Transcribe Speech From Audio`` / ``Detect Objects In Video`` tools, so a tool and an expert share
one loaded model). ``experts=[...]`` takes any ``ibllm_agent.experts.Expert`` objects instead.

Where the findings live:

- in the content block of the human message (``extras["context"]``), so the thread's checkpoint
  holds them and every later model call renders them without running anything;
- in ``<thread folder>/.experts.json`` (a ``FindingsStore`` keyed by content hash), so attaching the
  same content again in the thread — in this process or after a restart — reuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import ConfigError
from ibllm_agent.experts import CONTEXT_KEY, FindingsStore, SpeechExpert, VideoObjectsExpert, run_experts
from ibllm_agent.types import Media

if TYPE_CHECKING:
    from ibllm_agent.agent.models import ModelPool
    from ibllm_agent.agent.workspace import StoredFile, ThreadWorkspace

__all__ = ["FINDINGS_FILE", "AgentExperts", "default_experts"]

FINDINGS_FILE = ".experts.json"  # hidden: not a workspace file the model can name


class _PooledSpeech:
    """A ``SpeechRecognizer`` taken from the model pool for each call (registered on first use)."""

    def __init__(self, pool: ModelPool, settings: Any = None):
        from ibllm_agent.tools.speech import SpeechSettings, model_key

        self.pool = pool
        self.settings = settings or SpeechSettings()
        self.key = model_key(self.settings)

    def transcribe(self, source: Any, language: str | None = None) -> Any:
        import sys

        from ibllm_agent.tools.speech import SpeechRecognizer, console_progress

        _ensure(self.pool, self.key, lambda device: SpeechRecognizer.from_weights(self.settings, device=device))
        # A long recording takes a while before the turn starts: show it in a terminal (the CLI).
        progress = console_progress("transcribing the attachment") if sys.stderr.isatty() else None
        with self.pool.use(self.key) as recognizer:
            return recognizer.transcribe(source, language, progress=progress)


class _PooledVideo:
    """A ``VideoObjectDetector`` whose image detector comes from the model pool for each call."""

    def __init__(self, pool: ModelPool, settings: Any = None):
        from ibllm_agent.tools.video import DETECTOR_KEY, VideoSettings

        self.pool = pool
        self.settings = settings or VideoSettings()
        self.key = DETECTOR_KEY

    def detect_video(self, source: Any, vocabulary: Sequence[str] | None = None) -> Any:
        from ibllm_agent.tools.video import VideoObjectDetector, load_detector

        _ensure(self.pool, self.key, load_detector)
        with self.pool.use(self.key) as detector:
            return VideoObjectDetector(detector, self.settings).detect_video(source, vocabulary)


def _ensure(pool: ModelPool, key: str, loader: Any) -> None:
    from ibllm_agent.errors import ToolRegistryError

    if key not in pool:
        try:
            pool.register(key, loader)
        except ToolRegistryError:  # registered meanwhile by a tool call
            pass


def default_experts(pool: ModelPool, *, speech: Any = None, video: Any = None) -> list[Any]:
    """The paper's experts on ``pool``: Whisper (``SpeechSettings`` ``speech``) for audio and the video
    object detector (``VideoSettings`` ``video``) for video."""
    asr = _PooledSpeech(pool, speech)
    return [SpeechExpert(asr, key=asr.key), VideoObjectsExpert(_PooledVideo(pool, video))]


class AgentExperts:
    """The experts of one agent and how they are switched (per agent here, per call in ``lines``)."""

    def __init__(self, experts: Any, pool: ModelPool):
        if experts is None or experts is False:
            self.experts: list[Any] = []
        elif experts is True:
            self.experts = default_experts(pool)
        elif isinstance(experts, (list, tuple)):
            self.experts = list(experts)
        else:
            raise ConfigError(f"experts must be True/False/None or a list of experts, got {type(experts).__name__}")
        for e in self.experts:
            if not (hasattr(e, "name") and hasattr(e, "modalities") and callable(e)):
                raise ConfigError(f"{e!r} is not an expert (needs name, modalities and __call__(media))")

    @property
    def enabled(self) -> bool:
        return bool(self.experts)

    def store(self, thread: ThreadWorkspace) -> FindingsStore:
        return FindingsStore(thread.root / FINDINGS_FILE)

    def annotate(self, block: dict[str, Any], stored: StoredFile, thread: ThreadWorkspace,
                 enabled: bool | None = None) -> dict[str, Any]:
        """Put the context lines for ``stored`` into ``block["extras"]["context"]``.

        ``enabled``: the per-call switch (``None`` = the agent's setting). Switched off for the call,
        the block carries an empty list, which also keeps a chat model's own experts off it."""
        if enabled is None and not self.enabled:
            return block
        lines: list[str] = []
        if enabled is not False and self.experts:
            media = Media(modality=stored.modality, source=stored.path, name=stored.name)
            lines = run_experts(self.experts, [media], self.store(thread))
        return {**block, "extras": {**block.get("extras", {}), CONTEXT_KEY: lines}}
