"""``MultimodalLLM``: a media stage and a tensor model joined into the chat model's ``TextGenerator``.

    prompt + [Media] ─► MediaEncoder.encode ═ VisualFeatures ═► ImageBindLLM.generate / stream ─► text

``ibllm_agent.load_model`` returns one. ``.llm`` is the ``ImageBindLLM`` (token ids + features),
``.media`` the ``MediaEncoder`` (encoder + optional visual cache); neither knows the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ibllm_agent.errors import ConfigError
from ibllm_agent.media_encoder import MediaEncoder, as_batch
from ibllm_agent.types import CacheSettings, Generation, Media, Sampling, VisualFeatures


class ReleasedModelError(ConfigError):
    """A ``MultimodalLLM`` was used after ``release()``."""


class _Life:
    """Whether the weights behind one or more ``MultimodalLLM`` views were released."""

    def __init__(self) -> None:
        self.released = False
        self.lock = threading.Lock()
        self.on_release: list[Callable[[], None]] = []  # e.g. the loading pool forgetting the model


class MultimodalLLM:
    """ImageBind-LLM as a ``TextGenerator``: ``generate`` / ``stream`` take a final prompt plus ``Media``.

    Build with ``ibllm_agent.load_model(name_or_dir)``, or join parts yourself:
    ``MultimodalLLM(llm, MediaEncoder(encoder, cache))`` / ``MultimodalLLM.from_llm(llm)`` (the media
    stage of ``llm``'s config: its official encoder file, the checkpoint's ``encoder.safetensors`` or
    the preset's seeded encoder, on ``llm``'s device and dtype).
    """

    def __init__(self, llm: Any, media: MediaEncoder, *, name: str | None = None, _life: _Life | None = None):
        dim = media.out_dim
        if dim is not None and dim != llm.config.visual_dim:
            raise ConfigError(
                f"the encoder ({llm.config.encoder!r}) gives {dim}-d embeddings but the bind network takes "
                f"visual_dim={llm.config.visual_dim}: the checkpoint's encoder setting does not match its adapter"
            )
        self.llm = llm
        self.media = media
        self.name = name or type(llm).__name__
        # Shared by every MultimodalLLM over the same weights (``with_cache`` views): releasing one
        # releases them all.
        self._life = _life or _Life()

    @classmethod
    def from_llm(cls, llm: Any, cache: Any = None, *, name: str | None = None) -> MultimodalLLM:
        """``llm`` with the media stage its config names (see the class docstring)."""
        from ibllm_agent.model.checkpoint import load_encoder

        encoder = load_encoder(llm.config, llm.checkpoint_dir, llm.encoder_seed)
        media = MediaEncoder(encoder, cache, device=llm.device, dtype=llm.dtype, text_only=llm.config.text_only)
        return cls(llm, media, name=name)

    def with_cache(self, cache: Any) -> MultimodalLLM:
        """The same model and encoder (shared) with another visual cache (None: without one)."""
        return MultimodalLLM(self.llm, self.media.with_cache(cache), name=self.name, _life=self._life)

    @property
    def released(self) -> bool:
        return self._life.released

    # ------------------------------------------------------------------ TextGenerator
    @property
    def prompt_template(self) -> str:
        return self._live().llm.prompt_template

    @property
    def context_length(self) -> int:
        return self._live().llm.context_length

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    def count_tokens(self, text: str) -> int:
        return self._live().llm.count_tokens(text)

    def encode(
        self,
        media: Sequence[Media] | Sequence[Sequence[Media]] | None,
        cache: CacheSettings | None = None,
        *,
        batch_size: int = 1,
    ) -> VisualFeatures:
        """The media stage alone: ``media`` (one sample or a batch) -> ``VisualFeatures``."""
        return self._live().media.encode(media, cache, batch_size=batch_size)

    def _features(self, prompt: Any, media: Any, cache: CacheSettings | None) -> VisualFeatures:
        n = len(prompt) if isinstance(prompt, (list, tuple)) else 1
        if media is not None and len(media) > 0:
            batch = as_batch(media)
            if len(batch) != n:
                raise ConfigError(f"{n} prompts but media for {len(batch)} samples")
            media = batch
        with torch.no_grad():
            return self.media.encode(media, cache, batch_size=n)

    def generate(
        self,
        prompt: str | list[str],
        media: Sequence[Media] | Sequence[Sequence[Media]] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
        **sampling_overrides: Any,
    ) -> Generation | list[Generation]:
        """Encode ``media`` (one list per prompt for a list of prompts), then decode (see
        ``ImageBindLLM.generate`` for the sampling options)."""
        self._live()
        feats = self._features(prompt, media, cache)
        return self.llm.generate(prompt, feats, sampling=sampling, **sampling_overrides)

    def stream(
        self,
        prompt: str,
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
        **sampling_overrides: Any,
    ) -> Iterator[str]:
        """Text deltas of one generation; they join to ``generate(...).text`` for the same settings."""
        self._live()
        if not isinstance(prompt, str):
            raise ConfigError("stream() takes a single prompt string")
        feats = self._features(prompt, media, cache)
        return self.llm.stream(prompt, feats, sampling=sampling, **sampling_overrides)

    # ------------------------------------------------------------------ lifecycle
    def save_pretrained(self, path: str | Path) -> Path:
        """The model folder, with this stage's encoder as ``encoder.safetensors`` when the config names
        no official encoder file."""
        return self._live().llm.save_pretrained(path, encoder=self.media.encoder)

    def release(self) -> None:
        """Free the weights now: the LLM and the encoder go to the meta device (their memory is returned
        even while other objects still reference this one), the KV caches are dropped and a shared
        model is forgotten by ``load_model``'s pool. Using it (or a ``with_cache`` view of the same
        weights) afterwards raises ``ReleasedModelError``."""
        with self._life.lock:
            if self._life.released:
                return
            self._life.released = True
        callbacks, self._life.on_release = self._life.on_release, []
        for callback in callbacks:
            callback()
        was_cuda = self.llm.device.type == "cuda"
        engine = getattr(self.llm, "_engine", None)
        if engine is not None:
            engine.clear_cache()
        self.llm.to_empty(device="meta")
        if hasattr(self.media.encoder, "to_empty"):
            self.media.encoder.to_empty(device="meta")
        self.media.cache = None
        if was_cuda:
            torch.cuda.empty_cache()

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when these weights are released (by this object or a view)."""
        self._life.on_release.append(callback)

    def _live(self) -> MultimodalLLM:
        if self.released:
            raise ReleasedModelError(f"model {self.name!r} was released; load it again with ibllm_agent.load_model")
        return self

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.llm.device}, {self.llm.dtype}"
        return f"MultimodalLLM({self.name!r}, {state}, cache={self.media.cache is not None})"
