"""``ibllm-agent eval tools|mme`` and the evaluation runner (files, id join, inference, batching)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ibllm_agent.cli import _register_all, app
from ibllm_agent.evaluation.runner import load_predictions, predict_tools, score_tools
from ibllm_agent.protocol import THOUGHT_NO, THOUGHT_YES

TOOL_GT = f"{THOUGHT_YES}\nAction: Get Photo Description\nAction Input: image/abc.png\nObservation:\n"
NO_GT = f"{THOUGHT_NO}\nAI: Hello.\n"


@pytest.fixture(scope="module")
def cli():
    if not app.registered_commands:
        _register_all()
    return app


def _invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    gt = [
        {"id": 1, "instruction": "prompt one", "input": "", "output": TOOL_GT, "modality": "image"},
        {"id": 2, "instruction": "prompt two", "input": "", "output": NO_GT, "modality": "text"},
        {"id": 3, "instruction": "prompt three", "input": "", "output": TOOL_GT, "modality": "image"},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_eval_tools_pred_json(cli, gt_file, tmp_path):
    pred = [
        {"id": 1, "output": f"{THOUGHT_YES}\nAction: Get Photo Description\nAction Input: image/x.png"},
        {"id": 2, "output": f"{THOUGHT_YES}\nAction: Segment the Image\nAction Input: image/x.png"},
        {"id": 99, "output": "not in GT: ignored"},
    ]  # id 3 has no prediction: not counted
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    result = _invoke(cli, "eval", "tools", "--data", gt_file, "--pred", tmp_path / "pred.json", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == {"SR_t": 0.5, "SR_act": 0.5, "SR_args": 0.5, "SR": 0.5, "IoU": 0.5, "n": 2}
    text = _invoke(cli, "eval", "tools", "--data", gt_file, "--pred", tmp_path / "pred.json")
    assert "SR_args" in text.output and "50.00 %" in text.output


def test_eval_tools_by_key_and_last_duplicate_wins(cli, gt_file, tmp_path):
    pred = [
        {"id": 1, "output": "garbage"},
        {"id": 1, "output": [f"{THOUGHT_YES}\nAction: Get Photo Description\nAction Input: a.png"]},
        {"id": 2, "output": f"{THOUGHT_NO}\nAI: Hi."},
    ]
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    result = _invoke(cli, "eval", "tools", "--data", gt_file, "--pred", tmp_path / "pred.json", "--json",
                     "--by", "modality")
    report = json.loads(result.output)
    assert report["SR"] == 1.0 and report["n"] == 2
    assert report["by_modality"]["image"]["SR"] == 1.0 and report["by_modality"]["text"]["n"] == 1


def test_eval_tools_scripted_model_saves_predictions(cli, gt_file, tmp_path):
    outputs = [f"{THOUGHT_YES}\nAction: Get Photo Description\nAction Input: image/q.png\nObservation: x",
               f"{THOUGHT_NO}\nAI: Hi.", "nonsense"]
    (tmp_path / "outs.json").write_text(json.dumps(outputs))
    save = tmp_path / "out" / "pred.json"
    result = _invoke(cli, "eval", "tools", "--data", gt_file, "--model", f"scripted:{tmp_path / 'outs.json'}",
                     "--save-pred", save, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["n"] == 3 and report["SR"] == pytest.approx(2 / 3)
    saved = json.loads(save.read_text())
    # the continuation is cut at the "\nObservation:" stop string
    assert saved[0] == {"id": 1, "output": outputs[0].split("\nObservation:")[0]}
    assert [r["id"] for r in saved] == [1, 2, 3]
    assert load_predictions(save)[2] == outputs[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "exactly one of --pred"), (("--pred", "p.json", "--model", "tiny"), "exactly one of --pred"),
     (("--pred", "missing.json"), "prediction file not found")],
)
def test_eval_tools_errors(cli, gt_file, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = _invoke(cli, "eval", "tools", "--data", gt_file, *args)
    assert result.exit_code == 2 and message in result.output


def test_eval_tools_bad_gt(cli, tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps([{"id": 1, "output": "x"}]))
    (tmp_path / "p.json").write_text("[]")
    result = _invoke(cli, "eval", "tools", "--data", tmp_path / "gt.json", "--pred", tmp_path / "p.json")
    assert result.exit_code == 2 and "lacks ['instruction']" in result.output
    (tmp_path / "gt.json").write_text(json.dumps([{"id": [1], "instruction": "x", "output": "x"}]))
    result = _invoke(cli, "eval", "tools", "--data", tmp_path / "gt.json", "--pred", tmp_path / "p.json")
    assert result.exit_code == 2 and "ids must be strings or integers" in result.output
    (tmp_path / "gt.json").write_text("{not json")
    result = _invoke(cli, "eval", "tools", "--data", tmp_path / "gt.json", "--pred", tmp_path / "p.json")
    assert result.exit_code == 2 and "is not valid JSON" in result.output


def test_guided_predict_gives_each_prompt_the_names_it_offers():
    from ibllm_agent import protocol as P
    from ibllm_agent.evaluation.runner import predict
    from ibllm_agent.types import Generation

    seen = []

    class Recorder:
        prompt_template = "raw"

        def generate(self, prompt, media=None, *, sampling=None, cache=None):
            seen.append(sampling.guide)
            return Generation(text="x")

    prompts = [P.render_prompt([P.ToolSpec("a_b"), P.ToolSpec("Get Photo Description")], "q"),
               P.render_prompt([P.ToolSpec("c")], "q"), "a prompt without a tool list"]
    predict(Recorder(), prompts, [[], [], []], guided=True)
    assert [list(g.tools) if g else None for g in seen] == [["a_b", "Get Photo Description"], ["c"], None]
    assert not any(g.arguments for g in seen if g)
    seen.clear()
    predict(Recorder(), prompts, [[], [], []])
    assert seen == [None, None, None]


@pytest.mark.slow
@pytest.mark.parametrize("guided", [False, True])
def test_tiny_model_batched_equals_single(gt_file, guided):
    from ibllm_agent.evaluation.runner import load_generator

    gen = load_generator("tiny")
    gt = json.loads(gt_file.read_text())
    single = predict_tools(gen, gt, gt_file.parent, batch_size=1, max_new_tokens=6, guided=guided)
    batched = predict_tools(gen, gt, gt_file.parent, batch_size=3, max_new_tokens=6, guided=guided)
    assert single == batched and len(batched) == 3
    report = score_tools(gt, {r["id"]: r["output"] for r in batched})
    assert report["n"] == 3 and all(0.0 <= report[k] <= 1.0 for k in ("SR_t", "SR_act", "SR_args", "SR", "IoU"))


def test_eval_mme_pred(cli, tmp_path):
    items = [
        {"id": "a1", "image": "a.png", "question": "Is there a cat? Please answer yes or no.", "answer": "Yes"},
        {"id": "a2", "image": "a.png", "question": "Is there a dog? Please answer yes or no.", "answer": "No"},
        {"id": "b1", "image": "b.png", "question": "Is it red? Please answer yes or no.", "answer": "Yes"},
        {"id": "b2", "image": "b.png", "question": "Is it blue? Please answer yes or no.", "answer": "No"},
    ]
    (tmp_path / "mme.json").write_text(json.dumps(items))
    pred = [{"id": "a1", "output": "Yes, there is."}, {"id": "a2", "output": "No"},
            {"id": "b1", "output": "yes"}, {"id": "b2", "output": "I think so"}]
    (tmp_path / "p.json").write_text(json.dumps(pred))
    result = _invoke(cli, "eval", "mme", "--data", tmp_path / "mme.json", "--pred", tmp_path / "p.json", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["accuracy"] == 0.75 and report["accuracy_plus"] == 0.5 and report["n"] == 4
    assert report["total_score"] == pytest.approx(125.0)
    bad = [{**items[0], "answer": "maybe"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = _invoke(cli, "eval", "mme", "--data", tmp_path / "bad.json", "--pred", tmp_path / "p.json")
    assert result.exit_code == 2 and "must be Yes or No" in result.output
