"""Architecture of ImageBind (+ Point-Bind) as plain dataclasses, and the named presets.

``huge`` is the official ImageBind-huge (six modalities, the layout of Meta's ``imagebind_huge.pth``);
``huge_w3d`` adds the Point-Bind point-cloud branch (the layout of ``imagebind_w3D.pth``). ``tiny`` and
``tiny_w3d`` keep every structural choice (stems, patch sizes, token counts, input sizes, bias_kv,
heads, postprocessor scales, key names) and shrink widths and depths so a forward of every modality
runs in well under a second on CPU; they exist for tests and for the tiny ImageBind-LLM.

Input sizes are not knobs of the trained weights: the learned positional embeddings fix the token
counts, so the model checks that inputs have exactly the sizes below instead of interpolating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ibllm_agent.errors import ConfigError

# ImageBind's modality names (the keys of ``forward``'s dicts and of the checkpoint), in the
# order the reference registers them, which is also the order of the checkpoint keys.
IMAGEBIND_MODALITIES: tuple[str, ...] = ("vision", "text", "audio", "depth", "thermal", "imu")
POINT = "point"


@dataclass(frozen=True)
class TrunkConfig:
    """One pre-LN transformer trunk: width / depth / heads plus the per-modality switches."""

    width: int
    depth: int
    heads: int
    drop_path: float = 0.0  # last block's rate; linearly spaced from 0 over the blocks
    add_bias_kv: bool = False  # learned extra key/value (audio, depth, thermal, imu)
    pre_ln: bool = False  # LayerNorm before the first block (vision only)
    mlp_ratio: int = 4

    def validate(self, name: str) -> None:
        if min(self.width, self.depth, self.heads) < 1:
            raise ConfigError(f"{name} trunk: width, depth and heads must be >= 1, got {self}")
        if self.width % self.heads:
            raise ConfigError(f"{name} trunk: width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"{name} trunk: drop_path must be in [0, 1), got {self.drop_path}")


@dataclass(frozen=True)
class PointConfig:
    """Point-BERT trunk of Point-Bind (reference yaml ``PointTransformer_8192point``).

    ``pointnet_dims`` = (first conv hidden, first conv out, second conv hidden) of the per-group
    mini-PointNet; the reference hard-codes (128, 256, 512). ``embed_dim`` is the width of
    ``pc_projection``'s output, which the ``point`` head reads (512 in the reference).
    """

    num_group: int = 512
    group_size: int = 32
    encoder_dims: int = 256
    trans_dim: int = 384
    depth: int = 12
    heads: int = 6
    drop_path: float = 0.1
    pointnet_dims: tuple[int, int, int] = (128, 256, 512)
    pos_hidden: int = 128
    embed_dim: int = 512
    mlp_ratio: int = 4
    ln_eps: float = 1e-5  # Point-BERT uses nn.LayerNorm's default, unlike ImageBind's 1e-6

    def validate(self) -> None:
        if self.trans_dim % self.heads:
            raise ConfigError(
                f"point trunk: trans_dim {self.trans_dim} is not divisible by heads {self.heads}"
            )
        sizes = (
            self.num_group,
            self.group_size,
            self.encoder_dims,
            self.depth,
            self.pos_hidden,
            self.embed_dim,
        )
        if min(sizes + tuple(self.pointnet_dims)) < 1:
            raise ConfigError(f"point trunk: every size must be >= 1, got {self}")


@dataclass(frozen=True)
class ImageBindConfig:
    """Everything that decides the module layout and the forward semantics.

    Geometry fields mirror the reference preprocessing (``ImageBind/data.py``): 224-px images cut into
    14-px patches over a 2-frame Conv3d kernel, 128x204 fbank images with 16-px kernels at stride 10,
    77 text tokens over a 49 408-token CLIP BPE vocabulary, 224-px depth/thermal with 16-px patches and
    6x2000 IMU windows cut into 8-sample patches.
    """

    name: str = "huge"
    out_dim: int = 1024
    vision: TrunkConfig = TrunkConfig(1280, 32, 16, pre_ln=True)
    text: TrunkConfig = TrunkConfig(1024, 24, 16)
    audio: TrunkConfig = TrunkConfig(768, 12, 12, drop_path=0.1, add_bias_kv=True)
    depth: TrunkConfig = TrunkConfig(384, 12, 8, add_bias_kv=True)
    thermal: TrunkConfig = TrunkConfig(768, 12, 12, add_bias_kv=True)
    imu: TrunkConfig = TrunkConfig(512, 6, 8, drop_path=0.7, add_bias_kv=True)
    point: PointConfig | None = None

    # geometry (fixed by the positional embeddings)
    image_size: int = 224
    vision_kernel: tuple[int, int, int] = (2, 14, 14)  # (frames, h, w); images are repeated to 2 frames
    vocab_size: int = 49408
    context_length: int = 77
    audio_mel_bins: int = 128
    audio_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10
    depth_patch: int = 16  # depth and thermal
    imu_channels: int = 6
    imu_length: int = 2000
    imu_kernel: int = 8

    # postprocessor logit scales, as the reference: text learnable (init 1/0.07, clipped at
    # max_logit_scale after exp), the others fixed buffers; vision has none (normalise only).
    text_logit_scale: float = 1 / 0.07
    audio_logit_scale: float = 20.0
    depth_logit_scale: float = 5.0
    thermal_logit_scale: float = 10.0
    imu_logit_scale: float = 5.0
    point_logit_scale: float = 1.0
    max_logit_scale: float = 100.0
    head_dropout: float = 0.5  # imu and point heads only
    ln_eps: float = 1e-6  # blocks, vision pre-LN, heads (stem LayerNorms use torch's default 1e-5)

    # ---- derived token counts -------------------------------------------------------------------
    @property
    def vision_patches(self) -> int:
        return (self.image_size // self.vision_kernel[1]) * (self.image_size // self.vision_kernel[2])

    @property
    def audio_grid(self) -> tuple[int, int]:
        f = (self.audio_mel_bins - self.audio_kernel) // self.audio_stride + 1
        t = (self.audio_frames - self.audio_kernel) // self.audio_stride + 1
        return f, t

    @property
    def depth_patches(self) -> int:
        return (self.image_size // self.depth_patch) ** 2

    @property
    def imu_patches(self) -> int:
        return self.imu_length // self.imu_kernel

    @property
    def modalities(self) -> tuple[str, ...]:
        """ImageBind modality names this configuration encodes."""
        return IMAGEBIND_MODALITIES + ((POINT,) if self.point is not None else ())

    def trunk(self, modality: str) -> TrunkConfig:
        return getattr(self, modality)

    def logit_scale(self, modality: str) -> float | None:
        return None if modality == "vision" else getattr(self, f"{modality}_logit_scale")

    def validate(self) -> ImageBindConfig:
        for m in IMAGEBIND_MODALITIES:
            self.trunk(m).validate(m)
        if self.point is not None:
            self.point.validate()
        if self.out_dim < 1:
            raise ConfigError(f"out_dim must be >= 1, got {self.out_dim}")
        if self.image_size % self.vision_kernel[1] or self.image_size % self.depth_patch:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of the patch sizes")
        if self.imu_length % self.imu_kernel:
            raise ConfigError(
                f"imu_length {self.imu_length} is not a multiple of imu_kernel {self.imu_kernel}"
            )
        if self.text_logit_scale <= 0 or not math.isfinite(self.text_logit_scale):
            raise ConfigError(f"text_logit_scale must be positive, got {self.text_logit_scale}")
        return self


def _huge() -> ImageBindConfig:
    return ImageBindConfig(name="huge")


def _huge_w3d() -> ImageBindConfig:
    return ImageBindConfig(name="huge_w3d", point=PointConfig())


def _tiny() -> ImageBindConfig:
    # Same drop-path/bias_kv/pre-LN switches as huge; 2 blocks of width 32-48 everywhere.
    return ImageBindConfig(
        name="tiny",
        out_dim=64,
        vision=TrunkConfig(48, 2, 4, pre_ln=True),
        text=TrunkConfig(32, 2, 4),
        audio=TrunkConfig(32, 2, 4, drop_path=0.1, add_bias_kv=True),
        depth=TrunkConfig(16, 2, 2, add_bias_kv=True),
        thermal=TrunkConfig(32, 2, 4, add_bias_kv=True),
        imu=TrunkConfig(32, 2, 4, drop_path=0.7, add_bias_kv=True),
    )


def _tiny_w3d() -> ImageBindConfig:
    # Grouping geometry (512 centres x 32 neighbours) is kept; only widths shrink.
    point = PointConfig(
        encoder_dims=32,
        trans_dim=32,
        depth=2,
        heads=4,
        pointnet_dims=(16, 32, 64),
        pos_hidden=16,
        embed_dim=32,
    )
    return replace(_tiny(), name="tiny_w3d", point=point)


PRESETS = {"huge": _huge, "huge_w3d": _huge_w3d, "tiny": _tiny, "tiny_w3d": _tiny_w3d}


def preset(name: str) -> ImageBindConfig:
    """The configuration of a named preset (``huge``, ``huge_w3d``, ``tiny``, ``tiny_w3d``)."""
    try:
        factory = PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown ImageBind preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory().validate()


__all__ = [
    "IMAGEBIND_MODALITIES",
    "POINT",
    "PRESETS",
    "ImageBindConfig",
    "PointConfig",
    "TrunkConfig",
    "preset",
]
