"""Typed training recipes: one ``TrainConfig`` dataclass, YAML files under ``training/configs/``.

Each field carries its help text in ``metadata["help"]``; the CLI (``ibllm-agent train --help``) and
``python -m ibllm_agent.training --help`` are generated from it, and ``--key value`` overrides are parsed
with the field's type. Defaults in the dataclass are the reference's fine-tune values (§6.3); the stage
YAML files (``pretrain.yaml`` …) hold the per-stage values of the paper/reference.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

STAGES = ("pretrain", "finetune", "tools", "chat")
# The model phase (trainable set, reference §6.1) each stage trains.
STAGE_PHASE = {"pretrain": "pretrain", "finetune": "finetune", "tools": "finetune", "chat": "finetune"}
DATA_FORMATS = ("auto", "tsv", "webdataset", "alpaca", "llava", "sharegpt", "minigpt4", "gpt4tools")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("auto", "none", "ddp", "fsdp")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """One training run (a recipe). See each field's ``help``."""

    stage: str = _f("finetune", "Recipe: pretrain (bind network, prefix, gates), finetune (norm/bias/LoRA on "
                                "instruction data), tools (GPT4Tools data), chat (multi-turn conversations).")
    model: str = _f("tiny", "Starting model: a preset name (tiny, 7b) or a checkpoint folder "
                            "(ImageBindLLM.save_pretrained / ibllm-agent convert).")
    model_seed: int = _f(0, "Seed of a preset's random initialisation.")
    init_adapter: str | None = _f(None, "Adapter weights loaded onto the model before training: an official "
                                        "release .pth (e.g. 7B-pretrained.pth) or an adapter.safetensors.")
    data: list[str] = _f([], "Data files (globs allowed): TSV, JSON/JSONL or WebDataset .tar shards.")  # noqa: RUF009
    data_format: str = _f("auto", "Record format: auto (from extension and first record), tsv, webdataset, "
                                  "alpaca, llava, sharegpt, minigpt4, gpt4tools.")
    image_root: str | None = _f(None, "Folder that relative image paths in the data resolve against "
                                      "(default: the data file's folder).")
    template: str = _f("alpaca", "Prompt template of ibllm_agent.prompts the model is trained with.")
    max_words: int = _f(512, "Tokens per example (prompt + answer + EOS); longer ones are truncated "
                             "(reference: 96 pretrain, 512 finetune).")
    on_error: str = _f("skip", "Malformed records: skip (counted, first ones listed with file:line) or fail.")
    check_pretrained: bool = _f(True, "Refuse finetune/tools/chat on image data when every gate is zero (a model "
                                      "never pre-trained: the frozen visual path would stay silent).")
    features: str | None = _f(None, "Feature store written by `ibllm-agent train encode` (ImageBind features "
                                    "computed once); unset = encode images on the fly.")
    augment: bool = _f(False, "On-the-fly only: random-resized-crop images (the reference's training "
                              "transform) before encoding.")
    output_dir: str = _f("runs/train", "Run folder: checkpoints/, metrics.csv, tensorboard/, export/.")
    epochs: float = _f(4.0, "Passes over the data (fractional allowed).")
    warmup_epochs: float = _f(1.0, "Linear warm-up length in epochs (per-iteration), then a half cosine.")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (the schedule still spans `epochs`).")
    batch_size: int = _f(4, "Examples per device per micro-batch.")
    accum_iter: int = _f(1, "Gradient accumulation: micro-batches per optimizer step.")
    blr: float = _f(1e-3, "Base learning rate: lr = blr * batch_size * accum_iter * world_size / 256.")
    lr: float | None = _f(None, "Absolute learning rate (overrides blr).")
    min_lr: float = _f(0.0, "Learning rate at the end of the cosine.")
    weight_decay: float = _f(0.02, "AdamW weight decay (never on 1-D parameters or biases).")
    betas: list[float] = _f([0.9, 0.95], "AdamW betas.")  # noqa: RUF009 (_f returns a default_factory field)
    clip_grad: float | None = _f(None, "Clip the global gradient norm to this value (reference: none).")
    seed: int = _f(0, "Seed; rank r uses seed + r for its RNGs, the data order uses seed + epoch.")
    precision: str = _f("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.")
    strategy: str = _f("auto", "auto (DDP when launched by torchrun with >1 process), none, ddp, fsdp "
                               "(shards the frozen base across GPUs when it does not fit one).")
    device: str | None = _f(None, "Device (default: cuda:<local rank> when available, else cpu).")
    num_workers: int = _f(0, "DataLoader worker processes.")
    save_every: int = _f(1000, "Save a checkpoint every N optimizer steps (and always at the end).")
    keep_checkpoints: int = _f(2, "Checkpoints kept on disk (oldest removed first).")
    resume: str = _f("auto", "auto (latest checkpoint of output_dir if any), never, or a checkpoint folder.")
    log_every: int = _f(10, "Log loss/lr/tokens-per-s/gate magnitude every N optimizer steps.")
    tensorboard: bool = _f(True, "Write TensorBoard event files under output_dir/tensorboard.")
    wandb_project: str | None = _f(None, "Also log to this Weights & Biases project (needs `wandb`).")
    progress: bool = _f(True, "Show a tqdm progress bar (rank 0).")
    export: bool = _f(True, "At the end write export/imagebind_llm.pth (official layout, adapter only) and "
                            "export/model/ (ImageBindLLM.save_pretrained).")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def phase(self) -> str:
        return STAGE_PHASE[self.stage]

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"unknown training stage {self.stage!r}; expected one of {STAGES}")
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"unknown data_format {self.data_format!r}; expected one of {DATA_FORMATS}")
        if self.on_error not in ("skip", "fail"):
            raise ConfigError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("batch_size", "accum_iter", "max_words", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_words < 4:
            raise ConfigError(f"max_words must be >= 4, got {self.max_words}")
        if not (self.epochs > 0 and 0 <= self.warmup_epochs <= self.epochs):
            raise ConfigError(f"need epochs > 0 and 0 <= warmup_epochs <= epochs, got {self.epochs}, {self.warmup_epochs}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.augment and self.features:
            raise ConfigError("augment needs on-the-fly encoding: unset `features` to augment images")
        for name in ("blr", "min_lr", "weight_decay"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        from ibllm_agent.prompts import MODEL_TEMPLATES

        if self.template not in MODEL_TEMPLATES:
            raise ConfigError(f"unknown prompt template {self.template!r}; known: {sorted(MODEL_TEMPLATES)}")

    def effective_lr(self, world_size: int) -> float:
        """The reference's rule (§6.3): lr = blr · effective batch / 256 unless ``lr`` is given."""
        if self.lr is not None:
            return float(self.lr)
        return self.blr * self.batch_size * self.accum_iter * world_size / 256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- parsing


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """A YAML value or a CLI string -> the field's type (``ConfigError`` naming the field otherwise)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, inner, value)
    if origin is list:
        (inner,) = args
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} expects a list, got {value!r}")
        return [_coerce(name, inner, v) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field {name!r} expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    raise ConfigError(f"config field {name!r} has an unsupported type {tp!r}")  # pragma: no cover


def build_config(values: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """Typed ``TrainConfig`` from a mapping; unknown keys are an error naming ``source``."""
    types_ = field_types()
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown training config key(s) {unknown}; known: {sorted(types_)}")
    return TrainConfig(**{k: _coerce(k, types_[k], v) for k, v in values.items()})


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        bundled = resources.files("ibllm_agent.training").joinpath("configs", p.name)
        if p.parent == Path(".") and bundled.is_file():  # `--config pretrain.yaml` names a bundled recipe
            p = Path(str(bundled))
        else:
            raise ConfigError(f"training config not found: {path} (bundled: {', '.join(bundled_configs())})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"training config {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"training config {p} must be a mapping of field: value")
    return data


def bundled_configs() -> list[str]:
    folder = resources.files("ibllm_agent.training").joinpath("configs")
    return sorted(e.name for e in folder.iterdir() if e.name.endswith(".yaml"))


def load_config(stage: str | None, path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) + overrides -> ``TrainConfig``; ``stage`` (when given) must agree with the file."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    if stage is not None:
        if "stage" in values and values["stage"] != stage:
            raise ConfigError(f"{path} is a {values['stage']!r} recipe, not {stage!r}")
        values["stage"] = stage
    values.update(overrides or {})
    return build_config(values, source=str(path or "overrides"))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs (dashes or underscores) -> {field: raw string}."""
    known = field_types()
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides are --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known or key == "stage":
            raise ConfigError(f"unknown option --{key.replace('_', '-')}; see --help for the config fields")
        if not eq:
            if known[key] is bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
                value = "true"
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"option --{key.replace('_', '-')} needs a value")
                i += 1
                value = args[i]
        out[key] = value
        i += 1
    return out


def help_text() -> str:
    """One line per config field (name, type, default, help): the body of ``--help``."""
    lines = []
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "stage":  # the positional STAGE
            continue
        tp = field_types()[f.name]
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        default = getattr(defaults, f.name)
        lines.append(f"  --{f.name.replace('_', '-')} {tname} (default {default!r}): {f.metadata['help']}")
    return "\n".join(lines)
