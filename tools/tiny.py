"""Tiny random-init backends for every vision tool, built from configs (no download): tests and
``benchmarks/tools.py`` run the real tool code on them. Outputs are noise; shapes, plumbing and
file handling are real.

``tiny_loaders()`` returns ``{backend key: loader(device)}`` for ``ToolKit(loaders=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "tiny_clip_tokenizer",
    "tiny_imagebind",
    "tiny_inpainting",
    "tiny_loaders",
    "tiny_pix2pix",
    "tiny_sam",
    "tiny_text2image",
    "tiny_unclip",
]

_TEXT_DIM = 32
_EMBED_DIM = 64  # = the tiny ImageBind preset's out_dim, as 1024 = ImageBind-Huge = OpenCLIP ViT-H


def tiny_clip_tokenizer() -> Any:
    """A CLIP BPE tokenizer over the 256 byte symbols (+ word-final forms), no merges."""
    from transformers import CLIPTokenizer

    # The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the other bytes map
    # to code points from 256 upwards, so every input byte has a symbol.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _text_encoder(seed: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=514, hidden_size=_TEXT_DIM, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                            pad_token_id=513, projection_dim=_TEXT_DIM)
    return CLIPTextModel(config).eval()


def _unet(in_channels: int, seed: int, **extra: Any) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=_TEXT_DIM,
        attention_head_dim=8, norm_num_groups=8, **extra,
    ).eval()


def _vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # Three blocks -> latent scale factor 4 (the real VAE: 8), so a 64-px canvas is 16x16 latents.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    ).eval()


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _common(seed: int) -> dict[str, Any]:
    return {"vae": _vae(seed), "text_encoder": _text_encoder(seed), "tokenizer": tiny_clip_tokenizer(),
            "scheduler": _scheduler()}


def tiny_inpainting(device: str = "cpu", seed: int = 0) -> Any:
    """``StableDiffusionInpaintPipeline`` with a 9-channel UNet (latents + mask + masked-image latents)."""
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(unet=_unet(9, seed), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False, **_common(seed)).to(device)


def tiny_text2image(device: str = "cpu", seed: int = 0) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(unet=_unet(4, seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, **_common(seed)).to(device)


def tiny_pix2pix(device: str = "cpu", seed: int = 0) -> Any:
    """``StableDiffusionInstructPix2PixPipeline`` with an 8-channel UNet (latents + image latents)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline(unet=_unet(8, seed), safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False, **_common(seed)).to(device)


def tiny_unclip(device: str = "cpu", seed: int = 0) -> Any:
    """``StableUnCLIPImg2ImgPipeline`` whose UNet takes [image embedding (64), noise-level embedding (64)]."""
    import torch
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=_TEXT_DIM, projection_dim=_EMBED_DIM, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, intermediate_size=37, patch_size=4,
    )).eval()
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=vision,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=_EMBED_DIM),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        unet=_unet(4, seed, class_embed_type="projection", projection_class_embeddings_input_dim=2 * _EMBED_DIM),
        **_common(seed),
    ).to(device)


def tiny_sam(device: str = "cpu", seed: int = 0, img_size: int = 64) -> Any:
    """A ``segment_anything.Sam`` with a 1-block ViT on ``img_size`` px inputs (16-px patches)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = img_size // 16
    dim = 16
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=16, depth=1, num_heads=1,
                                      mlp_ratio=2.0, out_chans=dim, use_rel_pos=True, window_size=2,
                                      global_attn_indexes=(0,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
                                 iou_head_depth=1, iou_head_hidden_dim=16),
    )
    return sam.eval().to(device)


def tiny_imagebind(device: str = "cpu", seed: int = 0) -> Any:
    from ibllm_agent.encoders import ImageBind

    return ImageBind.from_preset("tiny", device=device, seed=seed).eval()


def tiny_detector(device: str = "cpu", seed: int = 0) -> Any:
    from ibllm_agent.tools.detection import GroundingDinoDetector

    det = GroundingDinoDetector.tiny(seed=seed)
    det.model.to(device)
    return det


def tiny_whisper(device: str = "cpu", seed: int = 0) -> Any:
    """A random-init 1-layer Whisper (``tools.speech.SpeechRecognizer``), 8 tokens per 30 s window."""
    from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings

    return SpeechRecognizer.tiny_random(SpeechSettings(sample_len=8), seed=seed, device=device)


def tiny_loaders(seed: int = 0) -> dict[str, Callable[[str], Any]]:
    """Loader overrides for every backend key of ``ibllm_agent.tools.backends.BACKENDS``."""
    builders = {
        "groundingdino": tiny_detector, "sam": tiny_sam, "sd_inpainting": tiny_inpainting,
        "instruct_pix2pix": tiny_pix2pix, "sd_text2image": tiny_text2image, "sd21_unclip": tiny_unclip,
        "imagebind": tiny_imagebind, "whisper": tiny_whisper,
    }
    return {key: (lambda device, b=build: b(device, seed)) for key, build in builders.items()}
