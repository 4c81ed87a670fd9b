"""The shipped demo model (``--model demo``, ``ibllm_agent/data/demo/``): loaded from the package,
evaluated again through the eval harness on the held-out synthetic splits of its recipe (seed 0), and
driving the chat model's tool calls on functions it never saw. ``metrics.json`` beside the checkpoint
holds what the recipe measured when it trained the model; these tests measure again. The bar (SR ≥
0.95 on val_seen) is held under guided decoding, how the chat model decodes every step; free
decoding, as GPT4Tools evaluates, is measured beside it."""

from __future__ import annotations

import json

import pytest

from ibllm_agent import protocol as P
from ibllm_agent.shipped import demo_model_dir


@pytest.fixture(scope="module")
def model():
    from ibllm_agent.loading import load_model

    return load_model("demo", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The recipe's held-out splits: they depend on the seed and the eval pools only, not on the size
    of the train split, so a small train split regenerates them exactly."""
    from ibllm_agent.training.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SyntheticConfig(seed=0, n_train=0, n_chat=0, media_train=1))
    return out


def test_shipped_files_size_and_recorded_metrics():
    folder = demo_model_dir()
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 25 * 2**20
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["recipe"]["seed"] == 0
    assert metrics["total_seconds"] <= 20 * 60 + 30  # the recipe on 2 cores, data to scores
    assert metrics["eval"]["val_seen"]["guided"]["SR"] >= 0.95 and metrics["eval"]["val_seen"]["SR"] >= 0.9


def test_held_out_splits_are_the_recipes(data):
    """The shipped scores were measured on these very samples (same ids, same count)."""
    recorded = json.loads((demo_model_dir() / "metrics.json").read_text())["eval"]
    for split, name in (("val_seen", "gpt4tools_val_seen.json"), ("test_unseen", "gpt4tools_test_unseen.json")):
        assert len(json.loads((data / name).read_text())) == recorded[split]["n"]


@pytest.mark.slow  # ~1 min: greedy decoding of 258 prompts on 2 cores
def test_demo_model_reaches_the_bar_on_the_held_out_splits(model, data):
    from ibllm_agent.training.demo import evaluate

    report = evaluate(model, data)
    seen, unseen = report["val_seen"], report["test_unseen"]
    assert seen["n"] == 115 and seen["guided"]["SR"] >= 0.95
    assert seen["SR"] >= 0.9  # free decoding: the model alone
    # Reported beside it: the unseen-tools split and the tool choice (SR_act) per attached modality.
    assert unseen["n"] == 143 and 0.0 < unseen["SR"] <= 1.0
    assert set(seen["by_modality"]) >= {"image", "audio", "video", "text"}
    assert all(0.0 <= m["SR_act"] <= 1.0 for m in seen["by_modality"].values())
    # Decoding is greedy on the CPU: the scores equal the recorded ones up to a sample or two.
    recorded = json.loads((demo_model_dir() / "metrics.json").read_text())["eval"]
    for split in ("val_seen", "test_unseen"):
        for key in ("SR_act", "SR"):
            assert report[split][key] == pytest.approx(recorded[split][key], abs=0.02)
            assert report[split]["guided"][key] == pytest.approx(recorded[split]["guided"][key], abs=0.02)


def test_eval_cli_scores_the_demo_model_on_a_slice(data, tmp_path):
    """``eval tools --model demo --json`` on modality-decided samples: the tool follows the attachment
    (the CLI resolves the attached files against the data file's folder)."""
    from typer.testing import CliRunner

    from ibllm_agent.cli import _register_all, app

    if not app.registered_commands:
        _register_all()
    items = [it for it in json.loads((data / "gpt4tools_val_seen.json").read_text()) if it["kind"] == "modality"][:8]
    gt = data / "slice.json"
    gt.write_text(json.dumps(items))
    result = CliRunner().invoke(app, ["eval", "tools", "--data", str(gt), "--model", "demo", "--json", "--guided",
                                      "--max-new-tokens", "48", "--save-pred", str(tmp_path / "pred.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    assert scores["n"] == 8 and scores["SR_act"] >= 0.85
    assert {p["id"] for p in json.loads((tmp_path / "pred.json").read_text())} == {it["id"] for it in items}


def test_chat_model_calls_an_invented_tool_with_schema_valid_args():
    from langchain_core.tools import tool

    from ibllm_agent.chat import ChatImageBindLLM

    @tool
    def parsec_tally(level: int) -> int:
        """Tally a parsec level."""
        return level * 3

    chat = ChatImageBindLLM(preset="demo", max_new_tokens=48)
    msg = chat.bind_tools([parsec_tally]).invoke("What is parsec_tally(17)? Use a tool.")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("parsec_tally", {"level": 17})]
    assert msg.response_metadata["raw_text"].lstrip().startswith(P.THOUGHT_YES)
