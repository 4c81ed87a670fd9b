"""Settings precedence (flag > env > config file > default) for every field, and device/dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ibllm_agent.config import Settings, get_settings, resolve_device, resolve_dtype
from ibllm_agent.errors import ConfigError

# field -> (config-file value, env value, flag value, expected-type converter)
CASES = {
    "weights_dir": ("/from/file/w", "/from/env/w", "/from/flag/w", Path),
    "workspace_dir": ("/from/file/ws", "/from/env/ws", "/from/flag/ws", Path),
    "device": ("cpu", "cuda:1", "mps", str),
    "dtype": ("fp16", "bf16", "fp32", str),
    "memory_url": ("sqlite:///file.db", "postgresql://env/db", "memory://", str),
}


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("IBLLM_CONFIG_FILE", str(path))
    return path


def _write(path: Path, **values: str) -> None:
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in values.items()))


@pytest.mark.parametrize("field", list(CASES))
def test_precedence_flag_over_env_over_file_over_default(field, config_file, monkeypatch, tmp_path):
    file_value, env_value, flag_value, conv = CASES[field]
    monkeypatch.delenv(f"IBLLM_{field.upper()}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = Settings.model_fields[field].default

    # 4. default (no file, no env, no flag)
    got = getattr(get_settings(), field)
    if field == "memory_url":
        assert got == f"sqlite:///{get_settings().workspace_dir / 'memory.sqlite'}"
    elif isinstance(default, Path):
        assert got == default.expanduser() and str(got).startswith(str(tmp_path / "home"))
    else:
        assert got == default

    # 3. config file beats the default
    _write(config_file, **{field: file_value})
    assert getattr(get_settings(), field) == conv(file_value)
    # 2. env beats the file
    monkeypatch.setenv(f"IBLLM_{field.upper()}", env_value)
    assert getattr(get_settings(), field) == conv(env_value)
    # 1. flag beats env; a None flag means "not given"
    assert getattr(get_settings(**{field: flag_value}), field) == conv(flag_value)
    assert getattr(get_settings(**{field: None}), field) == conv(env_value)


def test_default_paths_expand_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("IBLLM_WEIGHTS_DIR", "IBLLM_WORKSPACE_DIR", "IBLLM_CONFIG_FILE"):
        monkeypatch.delenv(key)
    s = get_settings()
    assert s.weights_dir == tmp_path / ".cache/ibllm"
    assert s.workspace_dir == tmp_path / ".local/share/ibllm/workspace"
    assert s.config_file == tmp_path / ".config/ibllm/config.toml"
    assert s.memory_url == f"sqlite:///{tmp_path}/.local/share/ibllm/workspace/memory.sqlite"
    assert s.device == "auto" and s.dtype == "auto"


def test_memory_url_follows_workspace_from_any_source(config_file, monkeypatch):
    monkeypatch.delenv("IBLLM_WORKSPACE_DIR")
    _write(config_file, workspace_dir="/ws/file")
    assert get_settings().memory_url == "sqlite:////ws/file/memory.sqlite"
    assert get_settings(workspace_dir="/ws/flag").memory_url == "sqlite:////ws/flag/memory.sqlite"


def test_tilde_in_config_file_value_is_expanded(config_file, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("IBLLM_WEIGHTS_DIR")
    _write(config_file, weights_dir="~/models")
    assert get_settings().weights_dir == tmp_path / "models"


def test_config_file_flag_beats_env(config_file, tmp_path, monkeypatch):
    monkeypatch.delenv("IBLLM_WEIGHTS_DIR")
    _write(config_file, weights_dir="/env-file")
    other = tmp_path / "other.toml"
    _write(other, weights_dir="/flag-file")
    assert get_settings().weights_dir == Path("/env-file")
    s = get_settings(config_file=other)
    assert s.weights_dir == Path("/flag-file") and s.config_file == other


def test_missing_config_file_is_fine(config_file):
    assert not config_file.exists()
    assert get_settings().device == "auto"


def test_broken_toml_names_the_file(config_file):
    config_file.write_text('device = "cpu\n')
    with pytest.raises(ConfigError, match=f"{config_file}.*not valid TOML"):
        get_settings()


def test_unknown_key_in_config_file(config_file):
    config_file.write_text('weight_dir = "/typo"\n')
    with pytest.raises(ConfigError, match="unknown key.*weight_dir"):
        get_settings()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("device", "gpu", "device"), ("device", "cuda:x", "device index"), ("dtype", "int8", "dtype")],
)
def test_invalid_values_are_config_errors(field, value, needle, monkeypatch):
    with pytest.raises(ConfigError, match=needle) as info:
        get_settings(**{field: value})
    assert value in str(info.value)
    monkeypatch.setenv(f"IBLLM_{field.upper()}", value)  # same check for the env source
    with pytest.raises(ConfigError, match=needle):
        get_settings()


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting.*colour"):
        get_settings(colour="red")


def test_resolve_device_auto_and_explicit():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(get_settings(device="cpu")) == torch.device("cpu")
    assert resolve_device(get_settings()).type == expected  # default "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu_is_config_error():
    with pytest.raises(ConfigError, match="'cuda:0'.*not available"):
        resolve_device("cuda:0")


def test_resolve_dtype_cpu_and_aliases():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(get_settings(device="cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("half") == torch.float16
    assert resolve_dtype(get_settings(dtype="fp16", device="cpu")) == torch.float16
    with pytest.raises(ConfigError, match="'int4'"):
        resolve_dtype("int4")


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_resolve_dtype_auto_on_cuda(bf16, expected, monkeypatch):
    # Pretend a GPU is there: "auto" must pick bf16 where supported and fp16 otherwise.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_dtype("auto", "cuda") == expected
    assert resolve_dtype(get_settings(device="auto")) == expected
    assert resolve_device("auto") == torch.device("cuda")


def test_empty_env_var_counts_as_unset(config_file, monkeypatch, tmp_path):
    # `IBLLM_WEIGHTS_DIR= cmd` must not mean Path("") == the current folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("IBLLM_WEIGHTS_DIR", "IBLLM_DEVICE", "IBLLM_CONFIG_FILE"):
        monkeypatch.setenv(key, "")
    s = get_settings()
    assert s.weights_dir == tmp_path / ".cache/ibllm"
    assert s.device == "auto"
    assert s.config_file == tmp_path / ".config/ibllm/config.toml"


def test_explicit_config_file_must_exist(config_file, tmp_path):
    missing = tmp_path / "typo.toml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        get_settings(config_file=missing)
    with pytest.raises(ConfigError, match="is not a file"):
        get_settings(config_file=tmp_path)


def test_non_utf8_config_file_is_config_error(config_file):
    config_file.write_bytes(b'device = "\xff"\n')
    with pytest.raises(ConfigError, match=f"{config_file}.*not UTF-8"):
        get_settings()


def test_relative_dirs_in_config_file_are_relative_to_the_file(config_file, monkeypatch, tmp_path):
    monkeypatch.delenv("IBLLM_WEIGHTS_DIR")
    monkeypatch.delenv("IBLLM_WORKSPACE_DIR")
    _write(config_file, weights_dir="models", workspace_dir="../ws")
    monkeypatch.chdir(tmp_path.parent)  # somewhere else: the result must not depend on it
    s = get_settings()
    assert s.weights_dir == config_file.parent / "models"
    assert s.workspace_dir == config_file.parent / "../ws"
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", "rel")  # env values stay relative to the current folder
    assert get_settings().weights_dir == Path("rel")


def test_toml_reader_is_a_declared_dependency_on_python_310():
    # config.py falls back to `tomli` before Python 3.11; requires-python allows 3.10.
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    deps = [d.replace(" ", "") for d in project["dependencies"]]
    assert any(d.startswith("tomli>=") and "python_version<'3.11'" in d for d in deps), deps
