"""Models for ``ChatImageBindLLM``: loading (``preset=…/model_dir=…, cache_dir=…``) and one call lock
per model."""

from __future__ import annotations

import threading
from typing import Any

from ibllm_agent.errors import ConfigError


def _attach_cache(model: Any, cache_dir: str) -> Any:
    """``model`` with a media stage using the ``VisualCache`` folder ``cache_dir`` (same weights, shared;
    the given model is not changed): its media encodings become cache-enhanced."""
    if not callable(getattr(model, "with_cache", None)):
        raise ConfigError(
            f"cache_dir={cache_dir!r} needs a model with a visual cache (a MultimodalLLM from "
            f"ibllm_agent.load_model); {type(model).__name__} has none"
        )
    from ibllm_agent.cache import VisualCache

    return model.with_cache(VisualCache.load(cache_dir))


def _load_model(
    preset: str | None,
    model_dir: str | None,
    device: str | None,
    dtype: str | None,
    overrides: dict[str, Any],
    cache_dir: str | None = None,
) -> Any:
    """The shared ``MultimodalLLM`` for these settings (``ibllm_agent.loading.load_shared``: one per
    name/folder, device, dtype, cache and overrides, loaded under a lock of its key only; device/dtype
    by the Settings rules). ``preset`` is any name of ``ibllm_agent.load_model`` (``tiny``, ``demo``)."""
    from pathlib import Path

    from ibllm_agent.loading import load_shared

    name = preset if preset is not None else Path(str(model_dir))  # a Path is always a folder
    return load_shared(name, device, dtype, cache_dir=cache_dir, overrides=overrides)


# One lock per generator object: LangChain's batch/abatch call the model from several threads, and a
# torch model with a KV/prefix cache is not safe to run concurrently (nor faster on one device).
# Reentrant so a stream consumer may call the same model from its own thread.
_CALL_LOCKS: dict[int, threading.RLock] = {}
_CALL_LOCKS_LOCK = threading.Lock()


def call_lock(model: Any) -> threading.RLock:
    """The lock every generate/stream call on ``model`` holds."""
    with _CALL_LOCKS_LOCK:
        return _CALL_LOCKS.setdefault(id(model), threading.RLock())
