"""The synthetic data generator: determinism, disjoint splits, protocol round trip, metric self-score,
media readable by the project's loaders, and the formats the training loaders take."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
from ibllm_agent.training.synthetic import SPLIT_FILES, SyntheticConfig, generate
from ibllm_agent.training.synthetic.__main__ import main as synthetic_main
from ibllm_agent.training.synthetic.media import SHAPES
from ibllm_agent.training.synthetic.tool_table import (
    DEFAULT_HELDOUT_TOOLS,
    MODALITY_FIND_TOOL,
    MODALITY_TEMPLATES,
    MODALITY_TOOL,
    TRANSCRIBE,
    VIDEO_DETECT,
)

from ibllm_agent import protocol as P
from ibllm_agent.errors import ConfigError
from ibllm_agent.evaluation.runner import score_tools

SMALL = {"n_train": 60, "n_val": 20, "n_test": 20, "n_chat": 20, "media_train": 4, "media_eval": 3}
_NEW_INPUT = re.compile(r"\nNew input: (.*)\n")
_TOOL_LINE = re.compile(r"^> (.+?): ", re.MULTILINE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    generate(out, SyntheticConfig(seed=3, **SMALL))
    return out


def _load(data: Path, split: str) -> list[dict]:
    return json.loads((data / SPLIT_FILES[split]).read_text())


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(data, tmp_path):
    generate(tmp_path / "again", SyntheticConfig(seed=3, **SMALL))
    assert _tree(tmp_path / "again") == _tree(data)
    generate(tmp_path / "other", SyntheticConfig(seed=4, **SMALL))
    other = _tree(tmp_path / "other")
    assert other["gpt4tools_train.json"] != _tree(data)["gpt4tools_train.json"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert {k: v for k, v in _tree(data).items() if k != "manifest.json"} == manifest["files"]


def test_every_file_kind_is_written(data):
    media = {p.parent.name for p in data.rglob("*.*") if p.parent != data}
    assert media == {"image", "video", "audio", "point"}
    for name in ["image_text.tsv", "alpaca.json", "llava.json", "llava_media.json", "sharegpt.json",
                 "mme_val.json", *SPLIT_FILES.values()]:
        assert (data / name).stat().st_size > 0, name


def test_splits_are_disjoint(data):
    train, val, test = (_load(data, s) for s in ("train", "val", "test"))
    ids = [s["id"] for s in train + val + test]
    assert len(ids) == len(set(ids))
    media = {s: {m["path"] for x in split for m in x["media"]} for s, split in zip("tvu", (train, val, test))}
    assert not (media["t"] & media["v"]) and not (media["t"] & media["u"]) and not (media["v"] & media["u"])
    # held-out wordings: no tool request of val/test is worded like a train request
    requests = {s: {_NEW_INPUT.search(x["instruction"]).group(1) for x in split if x["kind"] != "no_tool"}
                for s, split in zip("tvu", (train, val, test))}
    assert not (requests["t"] & requests["v"]) and not (requests["t"] & requests["u"])
    # held-out tools never appear in training, not even as distractors; the test split asks for them
    train_tools = {n for x in train for n in _TOOL_LINE.findall(x["instruction"])}
    assert not train_tools & set(DEFAULT_HELDOUT_TOOLS)
    episodes: dict[str, set] = {}
    for x in test:
        episodes.setdefault(x["id"].rsplit("-", 1)[0], set()).add(x["target"]["tool"])
    # every test episode calls at least one tool that training never showed (a chain may start with a
    # seen extractor, e.g. Line Detection before the unseen line-conditioned generator)
    assert episodes and all(tools - {None} - train_tools for tools in episodes.values())
    assert set(DEFAULT_HELDOUT_TOOLS) <= set().union(*episodes.values())


def test_outputs_parse_into_the_intended_call(data):
    n_calls = 0
    for split in ("train", "val", "test"):
        for s in _load(data, split):
            step = P.parse_step(s["output"])
            target = s["target"]
            if target["tool"] is None:
                assert step.kind == "final" and step.answer == target["answer"], s["id"]
                continue
            n_calls += 1
            assert step.kind == "action" and step.action == target["tool"], s["id"]
            tool = {"name": target["tool"], "parameters": target["parameters"]}
            assert P.map_arguments(step.action_input, tool) == target["args"], s["id"]
            # the called tool is one of the tools listed in the prompt
            assert target["tool"] in _TOOL_LINE.findall(s["instruction"]), s["id"]
            assert s["instruction"].count(f"> {target['tool']}: ") == 1
    assert n_calls > 50


def test_metric_harness_scores_ground_truth_as_one(data):
    for split in ("train", "val", "test"):
        gt = _load(data, split)
        report = score_tools(gt, {s["id"]: s["output"] for s in gt})
        assert report["n"] == len(gt)
        for key in ("SR_t", "SR_act", "SR_args", "SR", "IoU"):
            # 1 up to pycocoevalcap's BLEU smoothing (an exact match scores 1 - 2e-9 / words)
            assert report[key] == pytest.approx(1.0, abs=1e-8), (split, key)


def test_modality_decides_the_tool(data):
    train = _load(data, "train")
    ambiguous = [x for x in train if x["kind"] == "modality" and x["step"] == 0]
    assert {x["modality"] for x in ambiguous} == {"image", "audio", "video"}
    for x in ambiguous:
        request = _NEW_INPUT.search(x["instruction"]).group(1)
        attached = x["media"][0]["path"]
        wording = next(k for k, ts in MODALITY_TEMPLATES.items()
                       if any(re.fullmatch(re.escape(t).replace(r"\{file\}", ".+").replace(r"\{obj\}", ".+"), request)
                              for t in ts))
        expected = (MODALITY_TOOL if wording == "what" else MODALITY_FIND_TOOL)[x["modality"]]
        assert x["target"]["tool"] == expected and x["target"]["args"][next(iter(x["target"]["args"]))] == attached
        # the competing tools are offered too, so only the attachment's modality tells them apart
        shown = set(_TOOL_LINE.findall(x["instruction"]))
        assert len(shown & {TRANSCRIBE, VIDEO_DETECT, "Get Photo Description", "Detect the Give Object"}) >= 2
        assert f"named {attached}." in x["instruction"]


def test_video_requests_that_name_an_object_ask_the_detector_for_it(data):
    """``Detect Objects In Video`` takes an optional vocabulary: the object goes into the call exactly
    when the request names it (plain wordings like "Track the {obj} in {file}." as well as the ambiguous
    "find" ones), and never otherwise."""
    named = unnamed = 0
    for split in ("train", "val"):
        for x in _load(data, split):
            if x["target"].get("tool") != VIDEO_DETECT or x["step"] != 0:
                continue
            request = _NEW_INPUT.search(x["instruction"]).group(1)
            args = x["target"]["args"]
            assert args["video_path"] == x["media"][0]["path"]
            obj = args.get("vocabulary")
            if obj is None:
                unnamed += 1
                assert not re.search(rf"\w+ (?:{'|'.join(SHAPES)})", request)
            else:
                named += 1
                assert obj in request and x["output"].endswith(f", {obj}\nObservation:")
    assert named and unnamed


def test_train_mix_reweights_the_train_split_only(data, tmp_path):
    out = tmp_path / "functions"
    generate(out, SyntheticConfig(seed=3, **SMALL, train_mix={"function": 1.0}))
    assert {x["kind"] for x in _load(out, "train")} == {"function"}
    for split in ("val", "test"):
        assert _load(out, split) == _load(data, split)
    with pytest.raises(ConfigError, match="unknown episode kind"):
        SyntheticConfig(train_mix={"dance": 1.0}).check()
    cli = tmp_path / "cli"
    assert synthetic_main([str(cli), "--seed", "3", *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()],
                           "--train-mix", "function=1"]) == 0
    assert _load(cli, "train") == _load(out, "train")
    assert synthetic_main([str(tmp_path / "bad"), "--train-mix", "function"]) == 2
    with pytest.raises(ConfigError, match="non-negative"):
        SyntheticConfig(train_mix={"tool": -1.0, "function": 2.0}).check()


def test_function_calls_use_random_names_and_schemas(data):
    train, test = _load(data, "train"), _load(data, "test")
    fn_train = {x["target"]["tool"] for x in train if x["kind"] == "function" and x["target"]["tool"]}
    fn_test = {x["target"]["tool"] for x in test if x["kind"] == "function" and x["target"]["tool"]}
    assert len(fn_train) > 5 and fn_test and not fn_train & fn_test
    types = {p["type"] for x in train if x["kind"] == "function" and x["target"]["tool"]
             for p in x["target"]["parameters"]["properties"].values()}
    assert types == {"string", "integer", "number", "boolean"}


def test_media_load_with_the_project_loaders(data):
    from ibllm_agent import media

    shapes = {"audio": (3, 1, 128, 204), "point": (8192, 3)}
    for folder, shape in shapes.items():
        path = next((data / folder).iterdir())
        assert tuple(media.load(str(path), folder).shape) == shape
    clip = media.load(str(next((data / "video").iterdir())), "video")
    assert clip.shape[1:] == (3, 2, 224, 224)


def test_images_show_what_the_captions_say(data):
    from ibllm_agent.training.synthetic.media import COLORS
    from PIL import Image

    items = [x for x in _load(data, "train") if x["modality"] == "image" and x["kind"] == "tool"]
    rows = dict(r.split("\t") for r in (data / "image_text.tsv").read_text().splitlines()[1:])
    for x in items[:5]:
        name = x["media"][0]["path"]
        img = Image.open(data / name).convert("RGB")
        described = rows[name]
        assert f"Description: {described} " in x["instruction"]
        for color in [c for c in COLORS if f" {c} " in f" {described.lower()} "]:
            assert COLORS[color] in {px for _, px in img.getcolors(4096)}, (name, color)


def test_chat_formats(data):
    with open(data / "image_text.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["url", "caption"] and all((data / r[0]).is_file() for r in rows[1:])
    llava = json.loads((data / "llava.json").read_text())
    assert llava and all((data / r["image"]).is_file() for r in llava)
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in llava)
    assert all([t["from"] for t in r["conversations"]] == ["human", "gpt"] * (len(r["conversations"]) // 2)
               for r in llava)
    others = json.loads((data / "llava_media.json").read_text())
    assert {k for r in others for k in r} - {"id", "conversations"} <= {"audio", "video", "point"}
    assert not any("<image>" in t["value"] for r in others for t in r["conversations"])
    alpaca = json.loads((data / "alpaca.json").read_text())
    assert all(set(r) == {"instruction", "input", "output"} for r in alpaca)
    mme = json.loads((data / "mme_val.json").read_text())
    assert [r["answer"] for r in mme[:2]] == ["Yes", "No"] and mme[0]["image"] == mme[1]["image"]


def test_cli_and_config_errors(tmp_path, capsys):
    assert synthetic_main([str(tmp_path / "o"), "--seed", "1", "--n-train", "3", "--n-val", "2", "--n-test", "2",
                           "--n-chat", "2", "--media-train", "1", "--media-eval", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["gpt4tools_train.json"]["samples"] >= 3
    assert synthetic_main([str(tmp_path / "p"), "--heldout-tool", "Frobnicate"]) == 2
    assert "unknown held-out tool" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        SyntheticConfig(mix={"tool": 1.0, "dance": 1.0}).check()


def test_unrendered_train_names_widen_the_train_split_only(data, tmp_path):
    """``names_train`` adds file names without files to the train split's tool episodes (marked
    ``rendered: false``); val/test, the LLaVA records and the caption table keep to rendered files, and
    the rendered part of the set does not move."""
    out = tmp_path / "wide"
    generate(out, SyntheticConfig(seed=3, **{**SMALL, "n_train": 200}, names_train=50))
    train = _load(out, "train")
    used = [m for x in train for m in x["media"]]
    virtual = {m["path"] for m in used if m.get("rendered") is False}
    real = {m["path"] for m in used if "rendered" not in m}
    assert len(virtual) > 4 * len(real) > 0  # most attachments now come from the wide name pool
    assert all(not (out / p).exists() for p in virtual) and all((out / p).is_file() for p in real)
    for split in ("val", "test"):
        assert all("rendered" not in m and (out / m["path"]).is_file() for x in _load(out, split) for m in x["media"])
        assert _load(out, split) == _load(data, split)  # held-out splits unchanged by the train-side knobs
    for name in ("llava.json", "llava_media.json"):
        records = json.loads((out / name).read_text())
        assert all((out / r[m]).is_file() for r in records for m in ("image", "audio", "video", "point") if m in r)
    rows = (out / "image_text.tsv").read_text().splitlines()[1:]
    assert rows and all((out / r.split("\t")[0]).is_file() for r in rows)
    with pytest.raises(ConfigError):
        SyntheticConfig(names_train=-1).check()
