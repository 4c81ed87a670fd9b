"""ImageBind (six modalities) plus the optional Point-Bind branch, loadable from the official files.

    model = ImageBind.from_official()                     # imagebind_w3D.pth from the weights dir
    model = ImageBind.from_preset("tiny_w3d", seed=0)     # random tiny model for tests
    out = model({"vision": images, "audio": audio})       # {"vision": [B,1024], "audio": [B,1024]}
    z = model.encode("video", clips)                      # media names accepted: image/video -> vision

Per modality: preprocessor (stem -> tokens, CLS, positions) -> trunk (pre-LN blocks) -> head (pick the
CLS/EOT token, LN, Linear -> out_dim) -> postprocessor (L2-normalise, then x logit scale: text
clip(exp(s), 100) ~ 14.3 at init / learned, audio 20, depth 5, thermal 10, imu 5, point 1; vision
normalise only). Inputs with >= 5 dims carry a clip axis ([B, S, ...]: video [B,15,3,2,224,224], audio
[B,3,1,128,204]); the clips are encoded as a batch of B*S and the *postprocessed* clip embeddings are
averaged over S, without re-normalising (so their norm is <= the logit scale), as the reference does.

The module's ``state_dict()`` keys are exactly those of ``imagebind_huge.pth`` / ``imagebind_w3D.pth``
(see ``tests/test_encoders_manifest.py``), so the official files load strictly with no renaming.
The model is meant to be used frozen in eval mode (``from_preset``/``from_official`` return it in eval
mode): in train mode the IMU/audio/point drop-path and the IMU/point head dropout are active.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ibllm_agent.encoders.config import IMAGEBIND_MODALITIES, POINT, PRESETS, ImageBindConfig, preset
from ibllm_agent.encoders.layers import (
    LogitScale,
    Normalize,
    PadToFrames,
    PatchStem,
    PosEmbed,
    SelectToken,
    TextHead,
    Trunk,
)
from ibllm_agent.encoders.pointbind import PointTrunk
from ibllm_agent.errors import CheckpointError, EncoderInputError, MissingWeightError

# Our media names -> ImageBind's modality names.
MEDIA_TO_IMAGEBIND = {
    "image": "vision",
    "video": "vision",
    "vision": "vision",
    "text": "text",
    "audio": "audio",
    "depth": "depth",
    "thermal": "thermal",
    "imu": "imu",
    "point": "point",
}
# Prefix of the ImageBind keys inside an ImageBind-LLM training checkpoint.
LLM_PREFIX = "image_bind."


# ---- preprocessors ------------------------------------------------------------------------------
class PatchPreprocessor(nn.Module):
    """Image-like input -> [B, 1 + N, D]: stem tokens, a CLS token in front, learned positions.

    ``stem_name`` is the attribute the checkpoint uses (``rgbt_stem`` for vision, audio, thermal;
    ``depth_stem`` for depth)."""

    def __init__(self, stem_name: str, stem: PatchStem, num_patches: int, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.stem_name = stem_name
        self.add_module(stem_name, stem)
        self.pos_embedding_helper = PosEmbed(num_patches + 1, dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = getattr(self, self.stem_name)(x)  # [B, N, D]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding_helper.pos_embed


class ImuPreprocessor(nn.Module):
    """IMU [B, 6, 2000] -> 250 patches of 8 samples; each patch flattened channel-major (6 x 8 = 48)
    -> Linear 48 -> D (no bias) -> LayerNorm; CLS in front; learned positions [1, 251, D]."""

    def __init__(self, channels: int, length: int, kernel: int, dim: int):
        super().__init__()
        self.kernel = kernel
        self.pos_embed = nn.Parameter(torch.empty(1, length // kernel + 1, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.imu_stem = PatchStem(nn.Linear(channels * kernel, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        patches = x.unfold(-1, self.kernel, self.kernel).permute(0, 2, 1, 3)  # [B, 250, 6, 8]
        tokens = self.imu_stem(patches.reshape(b, patches.shape[1], -1))  # [B, 250, D]
        return torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos_embed


class TextPreprocessor(nn.Module):
    """Token ids [B, 77] -> embeddings + learned positions [B, 77, D]; owns the causal ``mask``
    buffer [77, 77] (0 on and below the diagonal, -inf above) that the text trunk uses."""

    def __init__(self, vocab_size: int, context_length: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        self.register_buffer("mask", torch.full((context_length, context_length), float("-inf")).triu(1))
        self.token_embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, ids: Tensor) -> Tensor:
        return self.token_embedding(ids) + self.pos_embed


def _ln(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


class _HybridMethod:
    """``ImageBind.load_official(path)`` builds a model (like ``from_official``);
    ``model.load_official(path)`` loads into an existing one."""

    def __init__(self, on_instance: Callable[..., Any], on_class: Callable[..., Any]):
        self.on_instance, self.on_class = on_instance, on_class
        functools.update_wrapper(self, on_instance)

    def __get__(self, obj: Any, objtype: type | None = None) -> Callable[..., Any]:
        if obj is None:
            return functools.partial(self.on_class, objtype)
        return functools.partial(self.on_instance, obj)


class ImageBind(nn.Module):
    """ImageBind encoders (vision, text, audio, depth, thermal, imu) and, when ``config.point`` is set,
    Point-Bind (``point``). See the module docstring for the forward semantics."""

    def __init__(
        self,
        config: ImageBindConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = config.validate()
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(config)
            self.apply(_init_linear)
        if dtype is not None:
            self.to(dtype=dtype)

    # -- construction ---------------------------------------------------------------------------------
    def _build(self, c: ImageBindConfig) -> None:
        eps, out = c.ln_eps, c.out_dim
        v, t, a, d, th, imu = (c.trunk(m) for m in IMAGEBIND_MODALITIES)
        f, tt = c.audio_grid
        frames = c.vision_kernel[0]
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": PatchPreprocessor(
                    "rgbt_stem",
                    PatchStem(
                        nn.Sequential(
                            PadToFrames(frames),
                            nn.Conv3d(3, v.width, c.vision_kernel, c.vision_kernel, bias=False),
                        )
                    ),
                    c.vision_patches,
                    v.width,
                ),
                "text": TextPreprocessor(c.vocab_size, c.context_length, t.width),
                "audio": PatchPreprocessor(
                    "rgbt_stem",
                    PatchStem(
                        nn.Conv2d(1, a.width, c.audio_kernel, c.audio_stride, bias=False),
                        nn.LayerNorm(a.width),
                    ),
                    f * tt,
                    a.width,
                ),
                "depth": PatchPreprocessor(
                    "depth_stem",
                    PatchStem(
                        nn.Conv2d(1, d.width, c.depth_patch, c.depth_patch, bias=False), nn.LayerNorm(d.width)
                    ),
                    c.depth_patches,
                    d.width,
                ),
                "thermal": PatchPreprocessor(
                    "rgbt_stem",
                    PatchStem(
                        nn.Conv2d(1, th.width, c.depth_patch, c.depth_patch, bias=False),
                        nn.LayerNorm(th.width),
                    ),
                    c.depth_patches,
                    th.width,
                ),
                "imu": ImuPreprocessor(c.imu_channels, c.imu_length, c.imu_kernel, imu.width),
            }
        )
        self.modality_trunks = nn.ModuleDict({m: Trunk(c.trunk(m), eps) for m in IMAGEBIND_MODALITIES})

        def cls_head(width: int, dropout: float | None = None) -> nn.Sequential:
            # LN (0), CLS (1), [Dropout (2)], Linear (2 or 3): the checkpoint's indices
            mid = [nn.Dropout(dropout)] if dropout is not None else []
            return nn.Sequential(_ln(width, eps), SelectToken(0), *mid, nn.Linear(width, out, bias=False))

        heads: dict[str, nn.Module] = {
            "vision": cls_head(v.width),
            "text": TextHead(t.width, out, eps),
            "audio": cls_head(a.width),
            "depth": cls_head(d.width),
            "thermal": cls_head(th.width),
            "imu": cls_head(imu.width, c.head_dropout),
        }
        post: dict[str, nn.Module] = {
            "vision": Normalize(),
            "text": nn.Sequential(
                Normalize(), LogitScale(c.text_logit_scale, learnable=True, max_scale=c.max_logit_scale)
            ),
        }
        for m in ("audio", "depth", "thermal", "imu"):
            post[m] = nn.Sequential(
                Normalize(), LogitScale(c.logit_scale(m), learnable=False, max_scale=c.max_logit_scale)
            )
        if c.point is not None:
            p = c.point
            heads[POINT] = nn.Sequential(
                _ln(p.embed_dim, eps), nn.Dropout(c.head_dropout), nn.Linear(p.embed_dim, out, bias=False)
            )
            post[POINT] = nn.Sequential(
                Normalize(), LogitScale(c.point_logit_scale, learnable=False, max_scale=c.max_logit_scale)
            )
        self.modality_heads = nn.ModuleDict(heads)
        self.modality_postprocessors = nn.ModuleDict(post)
        if c.point is not None:
            self.point_trunk = PointTrunk(c.point)

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> ImageBind:
        """A randomly initialised model of preset ``name`` (``huge``, ``huge_w3d``, ``tiny``,
        ``tiny_w3d``) in eval mode. ``device="meta"`` builds shapes only (no memory). ``seed`` makes
        the initialisation reproducible without touching the global RNG."""
        config = preset(name)
        if seed is None:
            return cls(config, device=device, dtype=dtype).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, device=device, dtype=dtype).eval()

    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike[str] | None = None,
        preset: str | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        freeze: bool = True,
    ) -> ImageBind:
        """Build a model from an official checkpoint (strict: every key and shape must match).

        ``path`` None -> the registry file (``imagebind_w3d`` for presets with Point-Bind or when
        ``preset`` is None, ``imagebind_huge`` otherwise; ``MissingWeightError`` when absent).
        ``preset`` None -> the preset whose layout the file has. The model is built on the meta device
        and takes the file's (memory-mapped) tensors, so no random init and no second copy; it is then
        moved to ``device``/``dtype`` (default CPU / float32), put in eval mode and, with ``freeze``,
        excluded from autograd."""
        if path is None:
            path = _registry_path(
                "imagebind_w3d" if preset is None or preset.endswith("_w3d") else "imagebind_huge"
            )
        state = read_checkpoint(path)
        name = preset if preset is not None else _infer_preset(state, path)
        model = cls.from_preset(name, device="meta")
        model._load_checked(state, path, assign=True)
        model.to(device=device or "cpu", dtype=dtype or torch.float32)
        if freeze:
            model.requires_grad_(False)
        return model.eval()

    def _load_official_into(self, path: str | os.PathLike[str] | None = None) -> ImageBind:
        """Strictly load an official checkpoint into this model (values are copied and cast to the
        model's dtype/device; a model built on the meta device takes the file's tensors instead)."""
        if path is None:
            path = _registry_path("imagebind_w3d" if self.config.point is not None else "imagebind_huge")
        on_meta = any(t.is_meta for t in self.state_dict().values())
        self._load_checked(read_checkpoint(path), path, assign=on_meta)
        return self

    load_official = _HybridMethod(_load_official_into, from_official.__func__)

    def _load_checked(self, state: Mapping[str, Tensor], path: Any, *, assign: bool) -> None:
        problems = checkpoint_mismatch(self.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not fit ImageBind preset {self.config.name!r}: {problems}"
            )
        self.load_state_dict(state, strict=True, assign=assign)

    # -- properties -----------------------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    @property
    def modalities(self) -> tuple[str, ...]:
        """ImageBind modality names this model encodes (``point`` only with Point-Bind)."""
        return self.config.modalities

    @property
    def device(self) -> torch.device:
        return self.modality_heads["vision"][2].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.modality_heads["vision"][2].weight.dtype

    def logit_scale(self, modality: str) -> float:
        """The factor the postprocessor multiplies by (1.0 for vision)."""
        m = MEDIA_TO_IMAGEBIND.get(modality, modality)
        if m not in self.modalities:
            raise EncoderInputError(
                f"unknown modality {modality!r} for preset {self.config.name!r}; expected one of {self.modalities}"
            )
        post = self.modality_postprocessors[m]
        return 1.0 if isinstance(post, Normalize) else float(post[1].scale())

    # -- forward --------------------------------------------------------------------------------------
    def forward(
        self, inputs: Mapping[str, Tensor], *, prenorm: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Encode a batch per modality.

        inputs: ImageBind modality name -> batched tensor: vision [B,3,224,224] or clips
        [B,S,3,2,224,224]; text [B,77] int ids; audio [B,1,128,204] or [B,S,1,128,204]; depth/thermal
        [B,1,224,224] or [B,S,1,224,224]; imu [B,6,2000]; point [B,N,3] (N >= 512).
        Returns {modality: [B, out_dim]} postprocessed embeddings; with ``prenorm=True`` a pair
        (postprocessed, head outputs before the postprocessor), both clip-averaged."""
        if not isinstance(inputs, Mapping):
            raise EncoderInputError(
                f"ImageBind inputs must be a dict modality -> tensor, got {type(inputs).__name__}"
            )
        outputs: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}
        for modality, x in inputs.items():
            x = self._check_input(modality, x)
            clips = x.ndim >= 5  # [B, S, ...] -> encode B*S clips, average their embeddings
            if clips:
                b, s = x.shape[:2]
                x = x.reshape(b * s, *x.shape[2:])
            head = self._head_output(modality, x)  # [B(*S), out_dim]
            emb = self.modality_postprocessors[modality](head)
            if clips:
                emb = emb.reshape(b, s, -1).mean(dim=1)
                head = head.reshape(b, s, -1).mean(dim=1)
            outputs[modality] = emb
            raw[modality] = head
        return (outputs, raw) if prenorm else outputs

    def encode(self, modality: str, x: Tensor, *, prenorm: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """One modality, by media name (``image``/``video`` -> vision) or ImageBind name:
        x batched as in ``forward`` -> [B, out_dim] (a pair (embedding, prenorm) with ``prenorm``)."""
        m = MEDIA_TO_IMAGEBIND.get(modality) if isinstance(modality, str) else None
        if m is None:
            raise EncoderInputError(
                f"unknown modality {modality!r}; expected one of {sorted(MEDIA_TO_IMAGEBIND)}"
            )
        if modality == "image" and isinstance(x, Tensor) and x.ndim != 4:
            raise EncoderInputError(f"image input: expected [B,3,H,W], got shape {tuple(x.shape)}")
        if modality == "video" and isinstance(x, Tensor) and x.ndim != 6:
            raise EncoderInputError(
                f"video input: expected [B,clips,3,frames,H,W], got shape {tuple(x.shape)}"
            )
        if prenorm:
            out, raw = self.forward({m: x}, prenorm=True)
            return out[m], raw[m]
        return self.forward({m: x})[m]

    def _head_output(self, modality: str, x: Tensor) -> Tensor:
        if modality == POINT:
            return self.modality_heads[POINT](self.point_trunk(x))
        tokens = self.modality_preprocessors[modality](x)
        if modality == "text":
            mask = self.modality_preprocessors["text"].mask.to(tokens.dtype)
            h = self.modality_trunks["text"](tokens, attn_mask=mask)
            return self.modality_heads["text"](h, x.argmax(dim=-1))  # EOT = the largest id
        return self.modality_heads[modality](self.modality_trunks[modality](tokens))

    # -- input checks ---------------------------------------------------------------------------------
    def _check_input(self, modality: str, x: Any) -> Tensor:
        c = self.config
        if modality not in IMAGEBIND_MODALITIES + (POINT,):
            hint = (
                f" (use {MEDIA_TO_IMAGEBIND[modality]!r} or encode())"
                if modality in MEDIA_TO_IMAGEBIND
                else ""
            )
            raise EncoderInputError(
                f"unknown ImageBind modality {modality!r}{hint}; expected one of {self.modalities}"
            )
        if modality not in self.modalities:
            raise EncoderInputError(
                f"ImageBind preset {c.name!r} has no {modality} encoder (use a *_w3d preset / imagebind_w3D.pth)"
            )
        if not isinstance(x, Tensor):
            raise EncoderInputError(f"{modality} input must be a torch.Tensor, got {type(x).__name__}")
        s = c.image_size
        item: dict[str, tuple[int, ...]] = {
            "audio": (1, c.audio_mel_bins, c.audio_frames),
            "depth": (1, s, s),
            "thermal": (1, s, s),
            "imu": (c.imu_channels, c.imu_length),
            "text": (c.context_length,),
        }
        shape = tuple(x.shape)
        if modality == "vision":
            t = c.vision_kernel[0]
            ok = (x.ndim == 4 and shape[1:] == (3, s, s)) or (
                x.ndim == 6 and shape[2] == 3 and shape[3] in (1, t) and shape[4:] == (s, s)
            )
            want = f"images [B,3,{s},{s}] or clips [B,S,3,{t},{s},{s}]"
        elif modality == POINT:
            p = c.point
            ok = x.ndim == 3 and shape[2] == 3 and shape[1] >= max(p.num_group, p.group_size)
            want = f"clouds [B,N,3] with N >= {max(p.num_group, p.group_size)}"
        else:
            n = len(item[modality])
            with_clips = modality in ("audio", "depth", "thermal")  # may carry a clip axis [B,S,...]
            ok = x.ndim in ((n + 1, n + 2) if with_clips else (n + 1,)) and shape[-n:] == item[modality]
            dims = ",".join(map(str, item[modality]))
            want = f"[B,{dims}]" + (f" or [B,S,{dims}]" if with_clips else "")
        if not ok:
            raise EncoderInputError(f"{modality} input: expected {want}, got shape {list(shape)}")
        if shape[0] == 0 or x.numel() == 0:
            raise EncoderInputError(f"{modality} input: empty batch (shape {list(shape)})")
        x = x.to(self.device) if self.device.type != "meta" else x
        if modality == "text":
            if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
                raise EncoderInputError(f"text input: expected integer token ids, got dtype {x.dtype}")
            if not x.is_meta and (int(x.min()) < 0 or int(x.max()) >= c.vocab_size):
                raise EncoderInputError(
                    f"text input: token ids must lie in [0, {c.vocab_size}), got [{int(x.min())}, {int(x.max())}]"
                )
            return x.long()
        if not x.dtype.is_floating_point:
            raise EncoderInputError(
                f"{modality} input: expected a floating-point tensor, got dtype {x.dtype}"
            )
        if modality == POINT:
            if not x.is_meta and not bool(torch.isfinite(x).all()):
                raise EncoderInputError("point input: the cloud holds NaN or inf coordinates")
            return x.float()  # FPS/kNN distances in fp32; the trunk casts the patches
        return x.to(self.dtype)


# ---- checkpoint helpers -------------------------------------------------------------------------
def _init_linear(m: nn.Module) -> None:
    # ViT-style init for the random (tiny / test) models; official weights overwrite it.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _registry_path(name: str) -> Path:
    from ibllm_agent.weights import require

    return require(name)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The flat ImageBind state dict of an official file (memory-mapped, ``weights_only``).

    Accepts a ``{"model": {...}}`` / ``{"state_dict": {...}}`` wrapper and ImageBind-LLM checkpoints
    whose ImageBind keys carry the ``image_bind.`` prefix (only those keys are kept, prefix stripped).
    """
    p = Path(path)
    if not p.is_file():
        # Name a real registry entry so the suggested `ibllm-agent download ...` command works.
        raise MissingWeightError(
            "imagebind_w3d", str(p), "no such file; `imagebind_huge` is Meta's six-modality file without Point-Bind"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, ValueError, EOFError):
        # Legacy (non-zip) torch.save files cannot be memory-mapped; read them normally (this also
        # re-raises the real error of a corrupt file below).
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read ImageBind checkpoint {p}: {type(e).__name__}: {e}") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"ImageBind checkpoint {p} is not a state dict of named tensors")
    if any(k.startswith(LLM_PREFIX) for k in obj):
        obj = {k[len(LLM_PREFIX) :]: v for k, v in obj.items() if k.startswith(LLM_PREFIX)}
    return obj


def checkpoint_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], limit: int = 5) -> str:
    """'' when ``state`` has exactly ``expected``'s keys and shapes, else a readable summary naming
    the first ``limit`` missing / unexpected / mis-shaped keys with their shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]

    def show(keys: list[str], fmt: Callable[[str], str]) -> str:
        more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(fmt(k) for k in keys[:limit]) + more

    parts = []
    if missing:
        parts.append(
            f"{len(missing)} missing key(s): " + show(missing, lambda k: f"{k} {list(expected[k].shape)}")
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected key(s): "
            + show(unexpected, lambda k: f"{k} {list(state[k].shape)}")
        )
    if shapes:
        parts.append(
            f"{len(shapes)} shape mismatch(es): "
            + show(
                shapes, lambda k: f"{k} checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
            )
        )
    return "; ".join(parts)


def _infer_preset(state: Mapping[str, Tensor], path: Any) -> str:
    """The preset whose layout ``state`` has exactly; else CheckpointError against the closest one."""
    has_point = any(k.startswith("point_trunk.") for k in state)
    order = [n for n in PRESETS if n.endswith("_w3d") == has_point] + [
        n for n in PRESETS if n.endswith("_w3d") != has_point
    ]
    best: tuple[int, str, str] | None = None
    for name in order:
        expected = ImageBind.from_preset(name, device="meta").state_dict()
        problems = checkpoint_mismatch(expected, state)
        if not problems:
            return name
        score = sum(
            1 for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)
        )
        score += sum(1 for k in state if k not in expected)
        if best is None or score < best[0]:
            best = (score, name, problems)
    assert best is not None
    raise CheckpointError(f"checkpoint {path} fits no ImageBind preset; closest is {best[1]!r}: {best[2]}")
