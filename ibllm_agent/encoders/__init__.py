"""ImageBind (vision, text, audio, depth, thermal, IMU) and Point-Bind (point clouds) encoders.

``ImageBind.from_preset("tiny" | "tiny_w3d" | "huge" | "huge_w3d")`` builds a model;
``ImageBind.from_official(path)`` / ``ImageBind.load_official(path)`` build one from the official
``imagebind_huge.pth`` / ``imagebind_w3D.pth`` (strict); ``model.encode(modality, x)`` -> [B, out_dim].
"""

from ibllm_agent.encoders.config import (
    IMAGEBIND_MODALITIES,
    PRESETS,
    ImageBindConfig,
    PointConfig,
    TrunkConfig,
    preset,
)
from ibllm_agent.encoders.imagebind import (
    MEDIA_TO_IMAGEBIND,
    ImageBind,
    checkpoint_mismatch,
    read_checkpoint,
)
from ibllm_agent.encoders.pointbind import PointBERT, PointTrunk, farthest_point_sample, group_points

__all__ = [
    "IMAGEBIND_MODALITIES",
    "MEDIA_TO_IMAGEBIND",
    "PRESETS",
    "ImageBind",
    "ImageBindConfig",
    "PointBERT",
    "PointConfig",
    "PointTrunk",
    "TrunkConfig",
    "checkpoint_mismatch",
    "farthest_point_sample",
    "group_points",
    "preset",
    "read_checkpoint",
]
