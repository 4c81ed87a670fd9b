"""A lazy pool of heavy tool models (detectors, segmenters, diffusion, speech) under a memory budget.

Loading every tool model at start-up is what makes Visual ChatGPT / GPT4Tools run out of GPU memory
(TaskMatrix #31, #59, #137). Here a tool asks the pool for its model only when it runs::

    pool = ModelPool(device="cuda:0", budget="10GiB")
    pool.register("sam_vit_h", load_sam, size_bytes=2_560 * 2**20)
    with pool.use("sam_vit_h") as sam:      # loads on first use, pinned while in use
        masks = sam(image)

When a load would exceed the budget, the least recently used models that are not in use are unloaded
first. A model whose own size exceeds the budget raises ``ModelBudgetError`` (it could never fit).
Sizes come from ``size_bytes`` at registration (checked *before* loading — the point is to avoid the
OOM), else are measured after loading (parameters + buffers of a torch module, ``.nbytes``, or a
``size_bytes`` attribute of the loaded object).
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ibllm_agent.errors import ModelBudgetError, ToolRegistryError
from ibllm_agent.sizes import parse_size

__all__ = ["ModelPool", "ModelSpec", "measure_bytes", "parse_size"]

def measure_bytes(obj: Any) -> int:
    """Memory held by a loaded model: torch parameters + buffers, ``.nbytes`` or ``.size_bytes``."""
    explicit = getattr(obj, "size_bytes", None)
    if isinstance(explicit, int):
        return explicit
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):
        seen: set[int] = set()
        total = 0
        for t in (*obj.parameters(), *obj.buffers()):
            if id(t) not in seen:  # tied weights count once
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total
    nbytes = getattr(obj, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, (int, float)) else 0


@dataclass
class ModelSpec:
    """How to load one model.

    ``load(device)`` returns the model on ``device`` (a string like ``"cpu"`` / ``"cuda:0"``).
    ``size_bytes``: its memory on the device, if known in advance (lets the pool make room before
    loading). ``device``: a per-model placement overriding the pool's device (e.g. a small detector
    on ``"cpu"`` while the diffusion model takes the GPU). ``unload(model)``: optional clean-up.
    """

    key: str
    load: Callable[[str], Any]
    size_bytes: int | None = None
    device: str | None = None
    unload: Callable[[Any], None] | None = None


@dataclass
class _Loaded:
    model: Any
    size: int
    device: str
    pins: int = 0


class ModelPool:
    """Loads registered models on first use, keeps them under ``budget`` with LRU unloading.

    Args:
        device: default device for models (``"auto"`` → CUDA when available, else CPU).
        budget: bytes (or ``"10GiB"``) allowed per device for loaded models; ``None`` = unlimited.

    Thread-safe: concurrent tool calls share one pool; a model in use (``with pool.use(key)``) is
    never unloaded under a running tool.
    """

    def __init__(self, device: str = "auto", budget: int | str | None = None):
        self._device_name = device
        self.budget = parse_size(budget)
        self._specs: dict[str, ModelSpec] = {}
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # oldest use first
        self._lock = threading.RLock()
        self.events: list[tuple[str, str]] = []  # ("load"|"unload", key): an audit trail for users/tests

    @property
    def device(self) -> str:
        if self._device_name == "auto":
            from ibllm_agent.config import resolve_device

            self._device_name = str(resolve_device("auto"))
        return self._device_name

    # -- registration ------------------------------------------------------------------------------
    def register(
        self,
        key: str,
        load: Callable[[str], Any],
        *,
        size_bytes: int | str | None = None,
        device: str | None = None,
        unload: Callable[[Any], None] | None = None,
        replace: bool = False,
    ) -> ModelSpec:
        """Declare a model; nothing is loaded until ``get``/``use``."""
        with self._lock:
            if key in self._specs and not replace:
                raise ToolRegistryError(f"model {key!r} is already registered in this pool")
            spec = ModelSpec(key, load, parse_size(size_bytes), device, unload)
            self._specs[key] = spec
            return spec

    def __contains__(self, key: str) -> bool:
        return key in self._specs

    # -- use ---------------------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """The model ``key``, loading it (and making room) if needed. Marks it most recently used."""
        with self._lock:
            return self._acquire(key, pin=False)

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """Like ``get`` but pins the model for the duration of the ``with`` block."""
        with self._lock:
            model = self._acquire(key, pin=True)
        try:
            yield model
        finally:
            with self._lock:
                if key in self._loaded:
                    self._loaded[key].pins -= 1

    def loaded(self) -> list[str]:
        """Keys of loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def used_bytes(self, device: str | None = None) -> int:
        with self._lock:
            return sum(e.size for e in self._loaded.values() if device is None or e.device == device)

    def unload(self, key: str) -> bool:
        """Unload ``key`` now (False if it was not loaded). Raises if it is in use."""
        with self._lock:
            entry = self._loaded.get(key)
            if entry is None:
                return False
            if entry.pins:
                raise ModelBudgetError(f"model {key!r} is in use by a running tool and cannot be unloaded")
            self._drop(key)
            return True

    def clear(self) -> None:
        """Unload every model that is not in use."""
        with self._lock:
            for key in [k for k, e in self._loaded.items() if not e.pins]:
                self._drop(key)

    # -- internals ---------------------------------------------------------------------------------
    def _acquire(self, key: str, *, pin: bool) -> Any:
        entry = self._loaded.get(key)
        if entry is None:
            entry = self._load(key)
        self._loaded.move_to_end(key)
        if pin:
            entry.pins += 1
        return entry.model

    def _load(self, key: str) -> _Loaded:
        spec = self._specs.get(key)
        if spec is None:
            raise ToolRegistryError(f"no model {key!r} registered; registered: {sorted(self._specs) or 'none'}")
        device = spec.device or self.device
        if spec.size_bytes is not None:
            self._make_room(key, spec.size_bytes, device)
        model = spec.load(device)
        size = spec.size_bytes if spec.size_bytes is not None else measure_bytes(model)
        entry = _Loaded(model, size, device)
        self._loaded[key] = entry
        self.events.append(("load", key))
        if spec.size_bytes is None:
            try:
                self._make_room(key, size, device)
            except ModelBudgetError:
                self._drop(key)
                raise
        return entry

    def _make_room(self, key: str, size: int, device: str) -> None:
        if self.budget is None:
            return
        if size > self.budget:
            raise ModelBudgetError(
                f"model {key!r} needs {_fmt(size)} but the pool budget on {device} is {_fmt(self.budget)}; "
                "raise the budget or place the model on another device"
            )
        others = lambda: sum(e.size for k, e in self._loaded.items() if e.device == device and k != key)
        for victim in [k for k, e in self._loaded.items() if e.device == device and k != key]:
            if others() + size <= self.budget:
                break
            if self._loaded[victim].pins == 0:
                self._drop(victim)
        if others() + size > self.budget:
            busy = [k for k, e in self._loaded.items() if e.pins and k != key]
            raise ModelBudgetError(
                f"model {key!r} ({_fmt(size)}) does not fit in the {_fmt(self.budget)} budget on {device}: "
                f"models in use by running tools: {', '.join(busy) or 'none'}"
            )

    def _drop(self, key: str) -> None:
        entry = self._loaded.pop(key)
        spec = self._specs.get(key)
        if spec is not None and spec.unload is not None:
            spec.unload(entry.model)
        self.events.append(("unload", key))
        del entry
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def __repr__(self) -> str:
        budget = _fmt(self.budget) if self.budget is not None else "unlimited"
        return f"ModelPool(device={self._device_name!r}, budget={budget}, loaded={self.loaded()})"


def _fmt(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
