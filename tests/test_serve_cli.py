"""``ibllm-agent serve`` / ``ui``: help text and start-up errors (serving itself: test_serve_threads.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ibllm_agent.cli import _register_all, app


@pytest.fixture(scope="module")
def cli():
    if not app.registered_commands:
        _register_all()
    return app


def test_serve_help_names_the_options(cli):
    result = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "220", "TERMINAL_WIDTH": "220"})
    assert result.exit_code == 0, result.output
    for option in ("--model", "--host", "--port", "--api-key", "--memory", "--workspace", "--max-batch-size",
                   "--max-queue", "--max-body-mb", "--no-batching", "--allow-private-network", "--shutdown-timeout"):
        assert option in result.output, option
    assert "127.0.0.1" in result.output and "8000" in result.output


def test_ui_help_names_the_options(cli):
    result = CliRunner().invoke(cli, ["ui", "--help"], env={"COLUMNS": "220", "TERMINAL_WIDTH": "220"})
    assert result.exit_code == 0, result.output
    for option in ("--model", "--port", "--memory", "--workspace", "--tool", "--no-tools", "--cache"):
        assert option in result.output, option


def test_serve_with_a_missing_model_is_a_clear_error(cli, tmp_path):
    from ibllm_agent.errors import ConfigError

    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "nope"), "--port", "1"])
    assert isinstance(result.exception, ConfigError)
    assert "not 'tiny', 'demo', 'scripted:FILE' or an existing model folder" in str(result.exception)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    result = CliRunner().invoke(cli, ["serve", "--model", f"scripted:{bad}"])
    assert isinstance(result.exception, ConfigError) and "JSON list of strings" in str(result.exception)
