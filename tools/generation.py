"""Image generation: Stable Diffusion text-to-image and the paper's any-to-image (Stable unCLIP
conditioned on ImageBind embeddings of any media, ``imagebind_llm_reference.md`` §8).

Any-to-image, as the reference's ``image_generate.py``: each attachment's ImageBind embedding is the
*pre-normalisation* head output (1024-d for ImageBind-Huge, the OpenCLIP ViT-H image-embedding space
SD 2.1 unCLIP expects); point-cloud embeddings are divided by 5; the mix is ``Σ w_i·e_i`` with the
weights normalised to sum 1 (the embeddings are not normalised first). With a visual cache, the mix
is cache-enhanced in direction only: ``‖e‖`` is kept, ``e/‖e‖`` is enhanced, then scaled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import ToolInputError
from ibllm_agent.tools.images import ToolOptions

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ibllm_agent.types import Media

__all__ = [
    "A_PROMPT",
    "N_PROMPT",
    "POINT_SCALE",
    "any_to_image",
    "imagebind_embeddings",
    "mix_embeddings",
    "run_pipeline",
    "text_to_image",
]

# GPT4Tools Text2Image: the quality suffix and negative prompt added to every request.
A_PROMPT = "best quality, extremely detailed"
N_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
            "cropped, worst quality, low quality")
POINT_SCALE = 5.0  # reference image_generate.py: point embeddings / 5


def run_pipeline(pipe: Any, desc: str, options: ToolOptions, default_steps: int, **kwargs: Any) -> Image.Image:
    """Call a diffusers pipeline with the tool's steps, seed and progress bar; the first image."""
    import torch

    steps = options.steps or default_steps
    pipe.set_progress_bar_config(disable=not options.progress, desc=desc, leave=False)
    if options.seed is not None:
        kwargs["generator"] = torch.Generator(device="cpu").manual_seed(options.seed)
    return pipe(num_inference_steps=steps, **kwargs).images[0]


def text_to_image(pipe: Any, text: str, options: ToolOptions) -> Image.Image:
    """GPT4Tools ``Generate Image From User Input Text``: SD at ``options.diffusion_size`` squared."""
    size = options.diffusion_size
    return run_pipeline(pipe, "text to image", options, 50, prompt=f"{text}, {A_PROMPT}", negative_prompt=N_PROMPT,
                        height=size, width=size)


# -- any-to-image --------------------------------------------------------------------------------------
def imagebind_embeddings(encoder: Any, media: Sequence[Media]) -> torch.Tensor:
    """[N, D] fp32 pre-normalisation ImageBind embeddings, one per item (point clouds / ``POINT_SCALE``).

    The one place this tool touches the encoders: when ``ibllm_agent.media_encoder.MediaEncoder``
    lands it replaces the body (``MediaEncoder.embed``).
    """
    import torch

    from ibllm_agent import media as media_io

    rows = []
    param = next(encoder.parameters())
    for item in media:
        x = media_io.load(item.source, item.modality)
        with torch.inference_mode():
            _, raw = encoder.encode(item.modality, x[None].to(param.device, param.dtype), prenorm=True)
        e = raw[0].float().cpu()
        rows.append(e / POINT_SCALE if item.modality == "point" else e)
    return torch.stack(rows)


def mix_embeddings(embeddings: torch.Tensor, weights: Sequence[float], cache: Any = None,
                   cache_settings: Any = None) -> torch.Tensor:
    """[D] weighted mix of [N, D] embeddings (weights normalised to sum 1), cache-enhanced when a
    ``VisualCache`` is given (direction enhanced, norm kept)."""
    import torch

    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if len(w) != embeddings.shape[0] or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ToolInputError(f"media weights must be >= 0 with a positive sum, one per item; got {list(weights)}")
    mix = (w[:, None] / w.sum() * embeddings).sum(dim=0)  # [D]
    if cache is None:
        return mix
    norm = mix.norm().clamp_min(1e-12)
    enhanced = cache.enhance((mix / norm)[None], settings=cache_settings)[0]
    return enhanced / enhanced.norm().clamp_min(1e-12) * norm


def any_to_image(pipe: Any, embedding: torch.Tensor, prompt: str, options: ToolOptions) -> Image.Image:
    """Stable unCLIP image from one [D] embedding (``image_embeds``, noise level 0) and a prompt."""
    size = options.unclip_size
    param = next(pipe.unet.parameters())
    return run_pipeline(pipe, "any to image", options, 20, prompt=prompt,
                        image_embeds=embedding[None].to(param.device, param.dtype), height=size, width=size)
