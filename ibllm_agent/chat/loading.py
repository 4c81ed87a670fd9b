"""Models for ``ChatImageBindLLM``: loading (``preset=…/model_dir=…, cache_dir=…``) and one call lock
per model."""

from __future__ import annotations

import json
import threading
from typing import Any

from ibllm_agent.errors import ConfigError

# Loaded models shared by every ChatImageBindLLM built with the same preset/dir/device/dtype:
# LangChain builds chat models freely (bind, with_config, the standard test suites), and each would
# otherwise hold its own copy of the weights.
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def _attach_cache(model: Any, cache_dir: str) -> None:
    """Load a ``VisualCache`` folder onto ``model`` (its media encodings become cache-enhanced)."""
    if not hasattr(model, "visual_cache"):
        raise ConfigError(
            f"cache_dir={cache_dir!r} needs a model with a visual cache (ImageBindLLM); "
            f"{type(model).__name__} has none"
        )
    from ibllm_agent.cache import VisualCache

    model.visual_cache = VisualCache.load(cache_dir)


def _load_model(
    preset: str | None,
    model_dir: str | None,
    device: str | None,
    dtype: str | None,
    overrides: dict[str, Any],
    cache_dir: str | None = None,
) -> Any:
    # The cache is part of the key: models are shared between chat models, a cache must not leak to
    # chat models built without one.
    key = (preset, model_dir, device, dtype, json.dumps(overrides, sort_keys=True, default=str), cache_dir)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        import torch

        from ibllm_agent.model import ImageBindLLM

        torch_dtype = None
        if dtype is not None:
            torch_dtype = getattr(torch, dtype, None)
            if not isinstance(torch_dtype, torch.dtype):
                raise ConfigError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16'")
        if preset is not None:
            model = ImageBindLLM.from_preset(preset, device=device, dtype=torch_dtype, **overrides)
        else:
            if overrides:
                raise ConfigError(
                    f"model_kwargs {sorted(overrides)} only apply to presets; a saved model's config is "
                    f"in {model_dir}/config.json"
                )
            model = ImageBindLLM.from_pretrained(model_dir, device=device, dtype=torch_dtype)
        if hasattr(model, "eval"):
            model.eval()
        if cache_dir is not None:
            _attach_cache(model, cache_dir)
        _MODELS[key] = model
        return model


# One lock per generator object: LangChain's batch/abatch call the model from several threads, and a
# torch model with a KV/prefix cache is not safe to run concurrently (nor faster on one device).
# Reentrant so a stream consumer may call the same model from its own thread.
_CALL_LOCKS: dict[int, threading.RLock] = {}
_CALL_LOCKS_LOCK = threading.Lock()


def call_lock(model: Any) -> threading.RLock:
    """The lock every generate/stream call on ``model`` holds."""
    with _CALL_LOCKS_LOCK:
        return _CALL_LOCKS.setdefault(id(model), threading.RLock())
