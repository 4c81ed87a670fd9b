"""Small typed values the stages of the data path exchange.

media ─► encoders ─► cache ─► fusion ═ VisualFeatures ═► model ─► protocol ─► chat model ─► agent

``Media`` is an attachment (any source a loader accepts, plus its modality and fusion weight).
``VisualFeatures`` is what the media stage (``ibllm_agent.media_encoder.MediaEncoder``) hands the
model: tensors only. ``Sampling`` and ``CacheSettings`` are per-call knobs. ``Generation`` is what a
text generator returns. ``TextGenerator`` is the seam between the chat model and whatever produces
text: the ``MultimodalLLM`` of ``ibllm_agent.load_model`` (media stage + ``ImageBindLLM``) or, in
tests, a scripted generator whose outputs are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # torch is not imported by this module (it stays light)
    import torch

Modality = Literal["image", "video", "audio", "text", "point", "depth", "thermal", "imu"]
MODALITIES: tuple[str, ...] = ("image", "video", "audio", "text", "point", "depth", "thermal", "imu")


@dataclass(frozen=True)
class Media:
    """One attachment.

    source: a path, bytes, PIL image, numpy array or torch tensor (already preprocessed tensors are
    passed through), or a string for ``text``. ``weight`` is the fusion weight (the reference's
    per-modality slider, default 1). ``name`` is the workspace name (e.g. ``image/ab12cd34.png``)
    when the agent stored the file.
    """

    modality: Modality
    source: Any
    weight: float = 1.0
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. Defaults are the reference's (T=0.1, top_p=0.75); temperature 0 = greedy.

    ``guide``: guided decoding (``ibllm_agent.model.guidance``): one ``Guide`` for every prompt of a
    call, one (or None) per prompt, or None (free decoding). The chat model passes a
    ``StepGuide`` (``ibllm_agent.step_grammar``) when tools are bound.
    """

    max_new_tokens: int = 256
    temperature: float = 0.1
    top_p: float = 0.75
    stop: tuple[str, ...] = ()
    seed: int | None = None
    guide: Any = None


@dataclass(frozen=True)
class CacheSettings:
    """Visual-cache enhancement knobs (reference: k=10, t=20, alpha=0.5, on when a cache is set)."""

    enabled: bool = True
    k: int = 10
    t: float = 20.0
    alpha: float = 0.5


@dataclass
class VisualFeatures:
    """The media stage's output, the model's visual input (one row per sample of a batch).

    features: [B, D] float32: per sample the L2-normalised ImageBind embeddings of its attachments,
    mixed with weights / (Σw + 1e-6) (not re-normalised), then cache-enhanced when a visual cache is
    used; a sample without media holds the text-only placeholder.
    active: [B] bool: rows that get a visual injection (False for a sample without media under the
    text-only policy ``off``).
    """

    features: torch.Tensor
    active: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 2 or self.active.shape != self.features.shape[:1]:
            from ibllm_agent.errors import ConfigError

            raise ConfigError(
                f"VisualFeatures needs features [B, D] and active [B], got {tuple(self.features.shape)} "
                f"and {tuple(self.active.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.features.shape[0])

    @property
    def any_active(self) -> bool:
        return bool(self.active.any())


@dataclass
class Generation:
    """Result of one generation: the new text only (prompt excluded) and token counts."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "eos"] = "eos"
    extras: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


@runtime_checkable
class TextGenerator(Protocol):
    """What the chat model needs from a model: text in (plus media), text out.

    ``prompt_template`` names the template in ``ibllm_agent.prompts`` the weights were trained with;
    the chat model wraps its rendered text with it before calling ``generate``/``stream``, whose
    ``prompt`` is the final raw text.
    """

    prompt_template: str
    context_length: int

    def generate(
        self,
        prompt: str,
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
    ) -> Generation: ...

    def stream(
        self,
        prompt: str,
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
    ) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...
