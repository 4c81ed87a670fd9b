"""Metrics of a run: ``metrics.csv`` (always), TensorBoard (``tensorboard/``), Weights & Biases (optional).

Only rank 0 logs. On resume the CSV keeps the rows up to the resumed step, so the file reads as one run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "gate_abs", "seconds")


class MetricsLogger:
    def __init__(self, out_dir: Path, *, resume_step: int = 0, tensorboard: bool = True,
                 wandb_project: str | None = None, config: dict[str, Any] | None = None):
        self.path = Path(out_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[list[str]] = []
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            kept = [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(kept)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("tensorboard logging needs the `tensorboard` package (pip install "
                                  "'ibllm-agent[train]'), or set tensorboard: false") from exc
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError("wandb_project is set but the `wandb` package is not installed") from exc
            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(out_dir), resume="allow")

    def log(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([row.get(c, "") for c in COLUMNS])
        step = int(row["step"])
        if self.tb is not None:
            for k in COLUMNS[2:]:
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", row[k], step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": row[k] for k in COLUMNS[2:] if row.get(k) is not None}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
