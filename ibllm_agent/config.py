"""Settings in effect for one run: where weights and the workspace live, device, dtype, memory.

Precedence, highest first:

1. explicit keyword arguments (the CLI passes its flags here; ``None`` means "flag not given"),
2. environment variables ``IBLLM_<FIELD>`` (``IBLLM_WEIGHTS_DIR``, ``IBLLM_DEVICE`` ...),
3. the TOML config file (``IBLLM_CONFIG_FILE``, default ``~/.config/ibllm/config.toml``),
4. the defaults below.

The config file is flat TOML with the field names as keys, for example::

    weights_dir = "/data/ibllm"
    device = "cuda:1"
    dtype = "bf16"
    memory_url = "sqlite:////data/ibllm/memory.sqlite"

Relative ``weights_dir`` / ``workspace_dir`` in the file are relative to the file's folder (not to
wherever the command runs). An empty environment variable counts as unset. A config file named
explicitly (``config_file=`` / ``--config``) must exist; the default one and ``$IBLLM_CONFIG_FILE``
may be absent (then only env and defaults apply).

``resolve_device`` / ``resolve_dtype`` turn the ``"auto"`` strings into torch objects; torch is
imported inside them so that ``import ibllm_agent.config`` stays light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ibllm_agent.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily at call time
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "IBLLM_"
DEFAULT_CONFIG_FILE = Path("~/.config/ibllm/config.toml")

# Spellings accepted for ``dtype``; values are torch attribute names.
_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def _config_file_from(init_kwargs: dict[str, Any]) -> tuple[Path, bool]:
    """The config file to read and whether it was named explicitly (the argument): else
    $IBLLM_CONFIG_FILE (an empty value counts as unset), else the default."""
    explicit = init_kwargs.get("config_file")
    raw = explicit or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    return Path(raw or DEFAULT_CONFIG_FILE).expanduser(), bool(explicit)


class _TomlFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source with our rules: a missing file is an empty source (unless it
    was named explicitly), a broken or unknown-keyed one a ``ConfigError``, and relative folders are
    relative to the file."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, explicit: bool = False):
        if not path.exists():
            if explicit:  # a typo in --config must not silently fall back to the defaults
                raise ConfigError(f"config file {path} does not exist")
        elif not path.is_file():
            raise ConfigError(f"config file {path} is not a file")
        self.path = path
        self._known = set(settings_cls.model_fields) - {"config_file"}
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {self.path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib lets the decode error through
            raise ConfigError(f"config file {self.path} is not UTF-8 text: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {self.path} cannot be read: {exc}") from None
        unknown = sorted(set(data) - self._known)
        if unknown:
            raise ConfigError(
                f"config file {self.path} has unknown key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(self._known))}"
            )
        for key in ("weights_dir", "workspace_dir"):
            # Relative folders are anchored at the file's folder, so the same file means the same
            # folders whatever the current directory is (env vars and flags stay cwd-relative).
            if isinstance(data.get(key), str) and data[key]:
                value = Path(data[key]).expanduser()
                data[key] = value if value.is_absolute() else self.path.parent / value
        return data


class Settings(BaseSettings):
    """Settings in effect (see the module docstring for precedence and the config-file format).

    Build one with :func:`get_settings`, which turns validation failures into ``ConfigError``.
    """

    # env_ignore_empty: `IBLLM_WEIGHTS_DIR= cmd` means "unset", not Path("") == the current folder.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, env_ignore_empty=True
    )

    weights_dir: Path = Field(
        default=Path("~/.cache/ibllm"),
        description="Folder holding downloaded checkpoints (`ibllm-agent download` writes here).",
    )
    workspace_dir: Path = Field(
        default=Path("~/.local/share/ibllm/workspace"),
        description="Folder for the agent's files: uploaded media, tool outputs, the memory database.",
    )
    device: str = Field(
        default="auto", description='"auto" (cuda if available, else cpu), "cpu", "cuda:0" ...'
    )
    dtype: str = Field(
        default="auto", description='"auto" (bf16/fp16 on cuda, fp32 on cpu), "fp32", "fp16", "bf16"'
    )
    memory_url: str | None = Field(
        default=None,
        description="Conversation memory backend: sqlite:///<path>, postgresql://..., or memory:// "
        "(in-process). Default: sqlite:///<workspace_dir>/memory.sqlite.",
    )
    config_file: Path = Field(
        default=DEFAULT_CONFIG_FILE, description="TOML file read below environment variables."
    )
    visual_cache: Path | None = Field(
        default=None,
        description="A visual-cache folder (`ibllm-agent cache build ... --out DIR`); when set, the agent's "
        "media encodings are cache-enhanced by default.",
    )

    @field_validator("weights_dir", "workspace_dir", "config_file", mode="after")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("visual_cache", mode="after")
    @classmethod
    def _expand_user_optional(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("device", mode="after")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip()
        kind = value.split(":", 1)[0]
        if kind not in {"auto", "cpu", "cuda", "mps", "xpu"} or (kind == "auto" and value != "auto"):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps, xpu")
        if ":" in value and not value.split(":", 1)[1].isdigit():
            raise ValueError(f"device {value!r}: the part after ':' must be a device index")
        return value

    @field_validator("dtype", mode="after")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto" and value not in _DTYPE_ALIASES:
            raise ValueError(f"dtype {value!r} is not one of auto, {', '.join(sorted(_DTYPE_ALIASES))}")
        return value

    @model_validator(mode="after")
    def _default_memory_url(self) -> Settings:
        if not self.memory_url:
            self.memory_url = f"sqlite:///{self.workspace_dir / 'memory.sqlite'}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir sources: the documented order is flags > env > config file > default.
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path, explicit = _config_file_from(init_kwargs)
        return init_settings, env_settings, _TomlFileSource(settings_cls, path, explicit)


def get_settings(**overrides: Any) -> Settings:
    """Settings with CLI-flag ``overrides`` on top; ``None`` values mean "not given" and are dropped.

    Raises ``ConfigError`` naming the offending field, value and source problem.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(Settings.model_fields)}"
        )
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def _device_string(settings_or_str: Settings | str | None) -> str:
    if settings_or_str is None:
        return get_settings().device
    if isinstance(settings_or_str, Settings):
        return settings_or_str.device
    return str(settings_or_str)


def resolve_device(settings_or_str: Settings | str | None = None) -> torch.device:
    """``"auto"`` → ``cuda`` when torch sees a GPU, else ``cpu``; explicit devices are checked.

    Raises ``ConfigError`` for a CUDA/MPS device this machine does not have.
    """
    import torch

    spec = _device_string(settings_or_str).strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {spec!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} requested but CUDA is not available on this machine (use cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {spec!r} requested but MPS is not available on this machine")
    return device


def resolve_dtype(settings_or_str: Settings | str | None = None, device: Any = None) -> torch.dtype:
    """``"auto"`` → bf16 on a CUDA device that supports it, fp16 on older CUDA, fp32 elsewhere.

    ``device`` (a ``torch.device`` or string) is what "auto" decides on; by default it is the
    resolved device of the same settings (or ``"auto"`` when a dtype string is passed).
    """
    import torch

    if isinstance(settings_or_str, Settings):
        spec, device = (
            settings_or_str.dtype,
            device if device is not None else resolve_device(settings_or_str),
        )
    else:
        spec = str(settings_or_str if settings_or_str is not None else get_settings().dtype)
    spec = spec.strip().lower()
    if spec != "auto":
        if spec not in _DTYPE_ALIASES:
            raise ConfigError(f"dtype {spec!r} is not one of auto, {', '.join(sorted(_DTYPE_ALIASES))}")
        return getattr(torch, _DTYPE_ALIASES[spec])
    device = resolve_device(device if device is not None else "auto")
    if device.type == "cuda":
        # bf16 keeps fp32's exponent range (no overflow in the 7B's activations); Volta/Turing lack it.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
