"""One place that loads models: ``load_model(name_or_dir, device, dtype)`` → ``MultimodalLLM``.

    import ibllm_agent
    model = ibllm_agent.load_model("demo")                 # the demo model shipped in the package
    model = ibllm_agent.load_model("official")             # <weights_dir>/official (the converted 7B)
    model = ibllm_agent.load_model("tiny", dtype="bf16")   # random tiny preset (tests, smoke runs)
    model = ibllm_agent.load_model("path/to/folder", device="cuda:1", cache_dir="cache/")
    model.generate("### Instruction: ...", [Media("image", "cat.jpg")]).text
    model.release()

Names (``available_models()``; ``_MODELS`` below, add entries there): a preset with random weights,
a converted folder under the weights dir, or the demo model shipped in the package
(``ibllm_agent.shipped``). ``auto`` is ``official`` when it is installed, else ``demo``. Anything else is a model folder (``save_pretrained`` /
``ibllm-agent convert`` output); a ``pathlib.Path`` is always a folder.

Device and dtype follow the Settings rules (``ibllm_agent.config``): argument > ``IBLLM_DEVICE`` /
``IBLLM_DTYPE`` > config file > default ``auto`` (cuda when available, else cpu; bf16 on cuda, fp16
on CUDA without bf16, fp32 on cpu). They are resolved once, before any weights are read (a CUDA
request on a machine without CUDA is a ``ConfigError`` at once), and applied to the LLM, the
ImageBind encoder and the visual cache's outputs alike.

``load_shared`` is the pool behind ``ChatImageBindLLM(preset=/model_dir=)``: one model per (name,
device, dtype, cache, overrides) key, loaded under a lock of that key only, forgotten on ``release()``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ibllm_agent.config import Settings
    from ibllm_agent.multimodal import MultimodalLLM


@dataclass(frozen=True)
class ModelSpec:
    """A named model: a ``preset`` built with random weights, a ``folder`` under the weights dir, or
    the ``shipped`` demo model (package data)."""

    description: str
    preset: str | None = None
    folder: str | None = None
    install: str = ""  # how to get a folder model that is missing
    shipped: bool = False


_MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("random tiny ImageBind-LLM (2 layers, 64 wide; tests and smoke runs)", preset="tiny"),
    "demo": ModelSpec(
        "the small demo ImageBind-LLM trained by this project's pipeline (shipped in the package)",
        install="rebuild it with `python -m ibllm_agent.training.demo {path}`", shipped=True,
    ),
    "official": ModelSpec(
        "the converted official ImageBind-LLM 7B",
        folder="official",
        install="fetch and convert it with `ibllm-agent pull imagebind-llm-7b` (LLaMA-7B must be placed by hand "
        "first; the command says where)",
    ),
}


def available_models() -> list[str]:
    """Names ``load_model`` knows besides model folders."""
    return [*_MODELS, "auto"]


def _auto() -> str:
    """``auto``: the converted official model when installed, else the shipped demo model."""
    from ibllm_agent.config import get_settings

    official = Path(get_settings().weights_dir) / str(_MODELS["official"].folder)
    return "official" if (official / "config.json").is_file() else "demo"


def resolve_placement(
    device: Any = None, dtype: Any = None, settings: Settings | None = None
) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) by the Settings rules: argument > IBLLM_* env > config file > default ``auto``.

    ``device``: ``"cpu"``, ``"cuda:1"``, a ``torch.device`` …; ``dtype``: ``"bf16"``, ``"float32"``,
    ``"auto"``, a ``torch.dtype`` … ``settings``: use these instead of reading env and file.
    Raises ``ConfigError`` for an unknown spelling or a device this machine lacks."""
    import torch

    from ibllm_agent.config import get_settings, resolve_device, resolve_dtype

    if settings is None:
        settings = get_settings()
    dev_spec = settings.device if device is None else str(device)
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating-point type, got {dtype}")
        return resolve_device(_check_device(dev_spec)), dtype
    dt_spec = settings.dtype if dtype is None else str(dtype)
    dev = resolve_device(_check_device(dev_spec))
    return dev, resolve_dtype(dt_spec, device=dev)


def _check_device(spec: str) -> str:
    from ibllm_agent.config import get_settings

    get_settings(device=spec)  # the same validation as a flag / env value (names the bad value)
    return spec


def _name_of(name_or_dir: str | Path) -> tuple[str, ModelSpec | None, Path | None]:
    """-> (display name, the named spec or None, the folder or None)."""
    if isinstance(name_or_dir, Path):
        return name_or_dir.name, None, name_or_dir.expanduser()
    if not isinstance(name_or_dir, str) or not name_or_dir:
        raise ConfigError(f"model must be a name {available_models()} or a model folder, got {name_or_dir!r}")
    if name_or_dir == "auto":
        name_or_dir = _auto()
    spec = _MODELS.get(name_or_dir)
    if spec is not None:
        return name_or_dir, spec, None
    folder = Path(name_or_dir).expanduser()
    return folder.name or name_or_dir, None, folder


def check_model_name(name: str) -> None:
    """Cheap check of a model spec before anything loads: a named folder model must be installed, any
    other non-name must be an existing folder (raises ``ConfigError`` naming how to get it)."""
    if name == "auto":
        name = _auto()
    spec = _MODELS.get(name)
    if spec is not None:
        if spec.folder is not None or spec.shipped:
            _folder_of(spec, name)
        return
    if not Path(name).expanduser().is_dir():
        raise ConfigError(
            f"model {name!r} is not a model name {available_models()}, 'scripted:PATH' or an existing model folder"
        )


def _folder_of(spec: ModelSpec, name: str) -> Path:
    from ibllm_agent.config import get_settings

    if spec.shipped:
        from ibllm_agent.shipped import demo_model_dir

        return demo_model_dir()  # CheckpointError naming the missing file and the rebuild command
    path = Path(get_settings().weights_dir) / str(spec.folder)
    if not (path / "config.json").is_file():
        hint = spec.install.format(path=path)
        raise ConfigError(
            f"the {name} model is not installed: expected a model folder at {path}"
            + (f"; {hint}" if hint else "") + " (or use a model folder, or 'tiny')"
        )
    return path


def load_model(
    name_or_dir: str | Path,
    device: Any = None,
    dtype: Any = None,
    *,
    cache_dir: str | Path | None = None,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> MultimodalLLM:
    """Load a model and its media stage (see the module docstring for names and placement rules).

    ``cache_dir``: a visual-cache folder (``ibllm-agent cache build``) given to the media stage, whose
    encodings are then cache-enhanced. ``overrides``: config fields of a preset (e.g.
    ``{"context_length": 2048}``); ``seed``: a preset's random init. Returns a ``MultimodalLLM``
    (``.llm``, ``.media``, ``generate`` / ``stream`` with ``Media``, ``release()``).
    """
    name, spec, folder = _name_of(name_or_dir)
    dev, dt = resolve_placement(device, dtype, settings)  # before any file is read
    overrides = dict(overrides or {})
    if spec is not None and (spec.folder is not None or spec.shipped):
        folder = _folder_of(spec, name)
    if folder is not None and overrides:
        raise ConfigError(
            f"config overrides {sorted(overrides)} only apply to presets; a saved model's config is in "
            f"{folder}/config.json"
        )
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"model {str(name_or_dir)!r} is neither a known name {available_models()} nor an existing model folder"
        )
    cache = None
    if cache_dir is not None:
        from ibllm_agent.cache import VisualCache

        cache = VisualCache.load(Path(cache_dir).expanduser())
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.multimodal import MultimodalLLM

    if spec is not None and spec.preset is not None:
        llm = ImageBindLLM.from_preset(spec.preset, seed=seed, device=dev, dtype=dt, **overrides)
    else:
        llm = ImageBindLLM.from_pretrained(folder, device=dev, dtype=dt)
    llm.set_phase("inference")
    model = MultimodalLLM.from_llm(llm, cache, name=name)
    if cache is not None and model.media.out_dim not in (None, cache.dim):
        raise ConfigError(
            f"the visual cache {cache_dir} holds {cache.dim}-d features but the encoder gives "
            f"{model.media.out_dim}-d embeddings"
        )
    return model


# ---------------------------------------------------------------------- the shared pool
_SHARED: dict[tuple, MultimodalLLM] = {}
_KEY_LOCKS: dict[tuple, threading.Lock] = {}
_POOL_LOCK = threading.Lock()  # guards the two dicts; never held while a model loads


def load_shared(
    name_or_dir: str | Path,
    device: Any = None,
    dtype: Any = None,
    *,
    cache_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MultimodalLLM:
    """``load_model`` through a pool: callers with the same key get the same object. Loads of
    different keys run in parallel (a lock per key, none around the pool); ``release()`` on the result
    frees it and removes it, so the next call loads afresh."""
    name, _, folder = _name_of(name_or_dir)
    dev, dt = resolve_placement(device, dtype)
    where = str(folder.resolve()) if folder is not None else name
    cache = None if cache_dir is None else str(Path(cache_dir).expanduser().resolve())
    key = (where, str(dev), str(dt), cache, json.dumps(dict(overrides or {}), sort_keys=True, default=str))
    with _POOL_LOCK:
        model = _SHARED.get(key)
        if model is not None:
            return model
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _POOL_LOCK:
            model = _SHARED.get(key)
        if model is not None:
            return model
        model = load_model(name_or_dir, dev, dt, cache_dir=cache_dir, overrides=overrides)

        def forget(key: tuple = key, model: MultimodalLLM = model) -> None:
            with _POOL_LOCK:
                if _SHARED.get(key) is model:
                    del _SHARED[key]

        model.on_release(forget)
        with _POOL_LOCK:
            _SHARED[key] = model
    return model


def shared_models() -> list[MultimodalLLM]:
    """The models the pool holds now."""
    with _POOL_LOCK:
        return list(_SHARED.values())
