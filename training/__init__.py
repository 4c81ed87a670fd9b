"""Training recipes (installed as ``ibllm_agent.training``): ``pretrain``, ``finetune``, ``tools``, ``chat``.

    >>> from ibllm_agent.training import run
    >>> result = run("finetune", "tiny_finetune.yaml", data=["alpaca.json"], output_dir="runs/x")  # doctest: +SKIP
    >>> result.model_dir                      # export/model, loadable with ImageBindLLM.from_pretrained

Under torchrun: ``torchrun --nproc-per-node 8 -m ibllm_agent.training finetune --config finetune.yaml``.
Heavy modules (torch, the model) are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ibllm_agent.training.configs import STAGES, TrainConfig, load_config

if TYPE_CHECKING:
    from ibllm_agent.training.engine import TrainResult

__all__ = ["STAGES", "TrainConfig", "load_config", "run"]


def run(stage: str, config: TrainConfig | str | Path | dict[str, Any] | None = None, **overrides: Any) -> TrainResult:
    """Run one recipe. ``config``: a ``TrainConfig``, a YAML path (or a bundled name such as
    ``"tiny_finetune.yaml"``), a dict of fields, or None (defaults); ``overrides`` replace fields.
    Returns a ``TrainResult`` (``output_dir``, ``losses``, ``checkpoint``, ``release``, ``model_dir`` …)."""
    from dataclasses import asdict

    from ibllm_agent.training.configs import build_config
    from ibllm_agent.training.engine import Trainer

    if isinstance(config, TrainConfig):
        if config.stage != stage:
            from ibllm_agent.errors import ConfigError

            raise ConfigError(f"the config is a {config.stage!r} recipe, not {stage!r}")
        cfg = build_config({**asdict(config), **overrides})
    elif isinstance(config, dict):
        cfg = build_config({**config, "stage": stage, **overrides})
    else:
        cfg = load_config(stage, config, overrides)
    return Trainer(cfg).run()

