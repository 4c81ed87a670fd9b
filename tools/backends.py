"""The heavy models behind the vision tools: which weights entry and packages each needs, how it
loads (official format, lazily, through the agent's ``ModelPool``), and whether it can run here.

A tool asks for its models with ``use_models(kit, "groundingdino", "sam")``: each model is registered
in the pool on first use (its ``size_bytes`` lets the pool unload least-recently-used models first)
and pinned while the tool runs. ``ToolKit.loaders`` replaces a loader (tests and benchmarks pass tiny
random-init backends from ``ibllm_agent.tools.tiny``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from ibllm_agent.tools.images import ToolOptions

__all__ = ["BACKENDS", "Backend", "ToolKit", "backend_missing", "use_models"]


@dataclass(frozen=True)
class Backend:
    """One heavy model: ``weights`` are registry entries of which any one suffices (the first present
    is loaded), ``packages`` import names it needs, ``size_bytes`` its approximate memory."""

    key: str
    weights: tuple[str, ...]
    packages: tuple[str, ...]
    size_bytes: int
    description: str


_GB = 1_000_000_000
BACKENDS: dict[str, Backend] = {
    b.key: b
    for b in (
        Backend("groundingdino", ("groundingdino_swint_ogc",), ("transformers",), int(0.7 * _GB),
                "GroundingDINO Swin-T OGC detector"),
        Backend("sam", ("sam_vit_h", "sam_vit_l", "sam_vit_b"), ("segment_anything",), int(2.6 * _GB),
                "Segment Anything (the largest checkpoint present)"),
        Backend("sd_inpainting", ("sd_inpainting",), ("diffusers",), int(2.2 * _GB),
                "Stable Diffusion 1.5 inpainting"),
        Backend("instruct_pix2pix", ("instruct_pix2pix",), ("diffusers",), int(2.2 * _GB), "InstructPix2Pix"),
        Backend("sd_text2image", ("sd15",), ("diffusers",), int(2.2 * _GB), "Stable Diffusion 1.5"),
        Backend("sd21_unclip", ("sd21_unclip",), ("diffusers",), int(3.5 * _GB), "Stable Diffusion 2.1 unCLIP"),
        Backend("imagebind", ("imagebind_w3d", "imagebind_huge"), ("torch",), int(4.8 * _GB),
                "ImageBind-Huge encoders (any-to-image embeddings)"),
        Backend("whisper", tuple(f"whisper_{s.replace('-', '_')}" for s in
                                 ("turbo", "large-v3", "medium", "small", "base", "tiny")),
                ("whisper",), int(1.6 * _GB), "OpenAI Whisper speech recognition (the largest present)"),
    )
}


def _present_weight(backend: Backend, settings: Any) -> str | None:
    from ibllm_agent.weights import missing_files

    return next((w for w in backend.weights if not missing_files(w, settings)), None)


def backend_missing(key: str, settings: Any = None) -> list[str]:
    """What keeps backend ``key`` from loading here: ``["package diffusers", "weights sd_inpainting"]``."""
    backend = BACKENDS[key]
    missing = [f"package {p}" for p in backend.packages if importlib.util.find_spec(p) is None]
    if _present_weight(backend, settings) is None:
        missing.append("weights " + " or ".join(backend.weights))
    return missing


def _dtype(settings: Any, device: str) -> Any:
    import torch

    from ibllm_agent.config import resolve_dtype

    return resolve_dtype(settings, torch.device(device))


def _load_groundingdino(device: str, settings: Any) -> Any:
    from ibllm_agent.tools.detection import load_detector

    return load_detector(device, settings)


def _load_sam(device: str, settings: Any) -> Any:
    from ibllm_agent.weights import require
    from ibllm_agent.tools.segmentation import load_sam

    name = _present_weight(BACKENDS["sam"], settings) or "sam_vit_h"
    return load_sam(require(name, settings), name.removeprefix("sam_"), device=device)


def _diffusers_loader(pipeline: str, weight: str) -> Callable[[str, Any], Any]:
    def load(device: str, settings: Any) -> Any:
        import diffusers

        from ibllm_agent.weights import require

        folder = require(weight, settings)
        pipe = getattr(diffusers, pipeline).from_pretrained(
            str(folder), torch_dtype=_dtype(settings, device), local_files_only=True
        )
        return pipe.to(device)

    return load


def _load_imagebind(device: str, settings: Any) -> Any:
    from ibllm_agent.encoders import ImageBind
    from ibllm_agent.weights import require

    name = _present_weight(BACKENDS["imagebind"], settings) or "imagebind_w3d"
    return ImageBind.from_official(require(name, settings), device=device).eval()


def _load_whisper(device: str, settings: Any) -> Any:
    from ibllm_agent.tools.speech import SpeechRecognizer

    return SpeechRecognizer.from_weights(app_settings=settings, device=device)


_LOADERS: dict[str, Callable[[str, Any], Any]] = {
    "groundingdino": _load_groundingdino,
    "sam": _load_sam,
    "sd_inpainting": _diffusers_loader("StableDiffusionInpaintPipeline", "sd_inpainting"),
    "instruct_pix2pix": _diffusers_loader("StableDiffusionInstructPix2PixPipeline", "instruct_pix2pix"),
    "sd_text2image": _diffusers_loader("StableDiffusionPipeline", "sd15"),
    "sd21_unclip": _diffusers_loader("StableUnCLIPImg2ImgPipeline", "sd21_unclip"),
    "imagebind": _load_imagebind,
    "whisper": _load_whisper,
}


@dataclass
class ToolKit:
    """What the vision tools share: settings, options, the multimodal model for the understanding
    tools, a visual cache for any-to-image, and loader overrides (``key -> loader(device)``)."""

    settings: Any = None
    options: ToolOptions = field(default_factory=ToolOptions)
    generator: Any = None
    cache: Any = None
    loaders: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)

    def loader(self, key: str) -> Callable[[str], Any]:
        if key in self.loaders:
            return self.loaders[key]
        load = _LOADERS[key]
        return lambda device: load(device, self.settings)

    def missing(self, key: str) -> list[str]:
        """Nothing when a loader override is given, else ``backend_missing``."""
        return [] if key in self.loaders else backend_missing(key, self.settings)


@contextmanager
def use_models(kit: ToolKit, *keys: str) -> Iterator[tuple[Any, ...]]:
    """The models ``keys`` from the running tool's pool (registered on first use), pinned while used."""
    from ibllm_agent.agent.registry import current_context
    from ibllm_agent.errors import ToolRegistryError

    pool = current_context().pool
    for key in keys:
        if key not in pool:
            size = None if key in kit.loaders else BACKENDS[key].size_bytes
            try:
                pool.register(key, kit.loader(key), size_bytes=size)
            except ToolRegistryError:  # a concurrent call registered it first
                pass
    with ExitStack() as stack:
        yield tuple(stack.enter_context(pool.use(k)) for k in keys)
