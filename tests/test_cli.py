"""The ``ibllm-agent`` command line: subcommand list, download, info, planned commands.

Most tests use typer's CliRunner in-process; two run the installed entry points in a subprocess.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibllm_agent import weights
from ibllm_agent.cli import _register_all, app
from ibllm_agent.weights import WeightFile, WeightSpec

ALL_COMMANDS = ["chat", "run", "tool", "serve", "ui", "train", "cache", "convert", "eval", "demo", "download", "info"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cli():
    if not app.registered_commands:
        _register_all()
    return app


def _invoke(cli, *args: str):
    return CliRunner().invoke(cli, list(args))


def _command_names(cli) -> list[str]:
    # Plain commands and command groups (e.g. `cache`, a typer sub-app).
    return [c.name for c in cli.registered_commands] + [g.name for g in cli.registered_groups]


def test_help_lists_all_subcommands(cli):
    result = _invoke(cli, "--help")
    assert result.exit_code == 0
    missing = [name for name in ALL_COMMANDS if name not in _command_names(cli)]
    assert not missing, f"subcommands not registered: {missing}"
    for name in ALL_COMMANDS:
        assert f" {name} " in result.output


@pytest.mark.parametrize("name", ["download", "info", "demo"])
def test_subcommand_help(cli, name):
    result = _invoke(cli, name, "--help")
    assert result.exit_code == 0, result.output
    assert f"ibllm-agent {name}" in result.output
    if name == "download":
        assert "--weights-dir" in result.output and "--force" in result.output
        assert "whisper_tiny" in result.output  # the epilog lists the names
    if name == "info":
        assert "--weights-dir" in result.output and "--json" in result.output
    if name == "demo":
        assert "--model" in result.output and "--workspace" in result.output


def test_info_json_with_empty_weights_dir(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(tmp_path / "env-dir"))
    empty = tmp_path / "empty"
    result = _invoke(cli, "info", "--weights-dir", str(empty), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["settings"]["weights_dir"] == str(empty)  # flag beats env
    assert [w["name"] for w in data["weights"]] == list(weights.WEIGHTS)
    assert not any(w["present"] for w in data["weights"])
    assert data["environment"]["torch"].startswith("2.")
    assert data["environment"]["device"] in {"cpu", "cuda"}
    assert not empty.exists()  # info never creates folders


def test_info_human_output(cli, tmp_path):
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper/tiny.pt").write_bytes(b"x")
    (tmp_path / "whisper/base.pt.part").write_bytes(b"y" * 2000)  # an interrupted download
    result = _invoke(cli, "info", "--weights-dir", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "1 of 22 present" in result.output
    assert "(resumable)" in result.output  # the table may wrap the cell, so only its end is checked
    data = json.loads(_invoke(cli, "info", "--weights-dir", str(tmp_path), "--json").output)
    assert next(w for w in data["weights"] if w["name"] == "whisper_base")["partial_bytes"] == 2000
    assert "missing (manual)" in result.output  # llama_7b
    assert "float32" in result.output


def test_info_bad_setting_is_one_line_error(cli):
    result = _invoke(cli, "info", "--dtype", "int3")
    assert result.exit_code == 2
    assert "dtype" in result.output and "int3" in result.output
    assert "Traceback" not in result.output


def test_missing_config_flag_is_one_line_error(cli, tmp_path):
    typo = tmp_path / "confg.toml"
    for command in ("info", "download"):
        args = [command, "--config", str(typo)] + (["whisper_tiny"] if command == "download" else [])
        result = _invoke(cli, *args)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"error: config file {typo} does not exist"


def test_download_into_unwritable_folder_is_one_line_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _invoke(cli, "download", "whisper_tiny", "--weights-dir", str(blocker / "w"), "--no-progress")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a typed error, not an escaped OSError
    assert f"to {blocker / 'w' / 'whisper' / 'tiny.pt'} failed" in result.output
    assert "failed: whisper_tiny" in result.output


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_command_fetches_and_info_sees_it(cli, file_server, tmp_path, monkeypatch):
    root, base = file_server
    body = os.urandom(50_000)
    (root / "model.bin").write_bytes(body)
    spec = WeightSpec(
        name="cli_test",
        kind="file",
        path="cli/model.bin",
        description="d",
        licence="MIT",
        source="s",
        size_bytes=len(body),
        size_exact=True,
        files=(
            WeightFile(
                "cli/model.bin", f"{base}/model.bin", len(body), True, hashlib.sha256(body).hexdigest()
            ),
        ),
    )
    monkeypatch.setitem(weights.WEIGHTS, "cli_test", spec)
    wdir = tmp_path / "weights"
    result = _invoke(cli, "download", "cli_test", "--weights-dir", str(wdir), "--no-progress")
    assert result.exit_code == 0, result.output
    assert (wdir / "cli/model.bin").read_bytes() == body
    assert str(wdir / "cli/model.bin") in result.output

    info = json.loads(_invoke(cli, "info", "--weights-dir", str(wdir), "--json").output)
    row = next(w for w in info["weights"] if w["name"] == "cli_test")
    assert row["present"] and row["size_on_disk"] == len(body)


def test_download_unknown_name_fetches_nothing(cli, tmp_path):
    wdir = tmp_path / "weights"
    result = _invoke(cli, "download", "whisper_tiny", "no_such_weight", "--weights-dir", str(wdir))
    assert result.exit_code == 2
    assert "unknown weight 'no_such_weight'" in result.output
    assert not wdir.exists()  # whisper_tiny, named first, was not fetched either


def test_download_failure_exit_1_keeps_going(cli, file_server, tmp_path, monkeypatch):
    root, base = file_server
    (root / "ok.bin").write_bytes(b"fine")
    for name, url in (("cli_404", f"{base}/absent.bin"), ("cli_ok", f"{base}/ok.bin")):
        monkeypatch.setitem(
            weights.WEIGHTS,
            name,
            WeightSpec(
                name=name,
                kind="file",
                path=f"cli/{name}.bin",
                description="d",
                licence="MIT",
                source="s",
                size_bytes=None,
                files=(WeightFile(f"cli/{name}.bin", url),),
            ),
        )
    result = _invoke(
        cli,
        "download",
        "cli_404",
        "cli_ok",
        "llama_7b",
        "--weights-dir",
        str(tmp_path),
        "--no-progress",
        "--retries",
        "0",
    )
    assert result.exit_code == 1
    assert "HTTP 404" in result.output
    assert "cannot be downloaded automatically" in result.output
    assert (tmp_path / "cli/cli_ok.bin").read_bytes() == b"fine"
    assert "failed: cli_404, llama_7b" in result.output


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBLLM_") or k == "IBLLM_SHARED"}
    env.update(
        IBLLM_WEIGHTS_DIR=str(tmp_path / "w"),
        IBLLM_CONFIG_FILE=str(tmp_path / "c.toml"),
        IBLLM_WORKSPACE_DIR=str(tmp_path / "ws"),
    )
    return env


def test_installed_console_script_help(tmp_path):
    exe = BIN / "ibllm-agent"
    assert exe.exists(), f"console script not installed at {exe} (pip install -e .)"
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, env=_env(tmp_path), timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for name in ["download", "info", "demo"]:
        assert name in proc.stdout


def test_python_m_info_with_empty_weights_dir(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ibllm_agent", "info"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "w") in proc.stdout
    assert "0 of 22 present" in proc.stdout


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run must run exactly the commands README.md gives (install, then test)."""
    import re

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    ci = (repo / ".ci" / "run").read_text()

    def block_after(heading: str) -> list[str]:
        section = readme.split(heading, 1)[1]
        code = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
        return [line.strip() for line in code.splitlines() if line.strip() and not line.startswith("#")]

    install = block_after("## Install")
    assert 'pip install -e ".[dev]"' in install[-1]
    assert 'pip install -q -e ".[dev]"' in ci
    (test_cmd,) = block_after("## Test")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert test_cmd in ci_lines, f"README test command {test_cmd!r} is not what .ci/run runs"


def test_package_and_cli_import_nothing_heavy():
    """`import ibllm_agent` and building the whole CLI stay light; the public names resolve lazily."""
    code = (
        "import sys, ibllm_agent, ibllm_agent.cli as cli; cli._register_all(); "
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'langgraph', 'faiss', 'av') "
        "if m in sys.modules]; "
        "print(heavy); print(sorted(set(ibllm_agent.__all__) - set(dir(ibllm_agent))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "[]"], proc.stdout
    import ibllm_agent

    assert ibllm_agent.Settings.__name__ == "Settings"
    assert ibllm_agent.Sampling().temperature == 0.1


def test_readme_quickstart_python_example_runs(tmp_path):
    """The Python example of README's quickstart runs as written (tiny random model, temp dirs)."""
    import re

    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- section: quickstart -->", 1)[1].split("<!-- /section: quickstart -->", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "photo.jpg")  # the example's photo.jpg
    env = _env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The default memory is SQLite under the workspace, as the example's comment says.
    assert (Path(env["IBLLM_WORKSPACE_DIR"]) / "memory.sqlite").is_file()
    assert (Path(env["IBLLM_WORKSPACE_DIR"]) / "threads" / "thread-1").is_dir()
