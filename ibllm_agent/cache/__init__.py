"""Visual cache: image features + a faiss index for the reference's cache-enhanced encoding.

``VisualCache`` builds (from image folders, WebDataset tar shards or .npy/.parquet feature files),
saves/loads atomically, reads the reference's plain ``knn.index``, and ``enhance``s query features
per sample. Index sizing rules: ``ibllm_agent.cache.index``; on-disk layout: ``ibllm_agent.cache.store``;
the math: ``ibllm_agent.cache.enhance``; building: ``ibllm_agent.cache.build``.
"""

from __future__ import annotations

from ibllm_agent.cache.index import IndexPlan, plan_index
from ibllm_agent.cache.visual_cache import VisualCache

__all__ = ["IndexPlan", "VisualCache", "plan_index"]
