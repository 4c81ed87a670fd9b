"""Detection cascade: offline noun extraction and grounding an answer's nouns with the detector."""

from __future__ import annotations

import pytest
from PIL import Image

from ibllm_agent.tools.cascade import CascadeResult, extract_nouns, ground_answer, rule_based_nouns
from ibllm_agent.tools.detection import Detection


@pytest.mark.parametrize(
    ("text", "nouns"),
    [
        ("A man is riding a brown horse next to the river.", ["man", "brown horse", "river"]),
        ("The image shows two cats and a red ball on the sofa.", ["image", "cats", "red ball", "sofa"]),
        ("There is a dog sleeping under a big old wooden table", ["dog", "big old wooden table"]),
        ("It looks nice.", []),
        ("A sitting cat, a cat.", ["sitting cat", "cat"]),
    ],
)
def test_rule_based_noun_phrases(text, nouns):
    assert rule_based_nouns(text) == nouns


def test_extract_nouns_works_offline_without_a_spacy_pipeline(monkeypatch):
    import ibllm_agent.tools.cascade as cascade

    cascade._spacy_pipeline.cache_clear()
    monkeypatch.setattr(cascade, "_SPACY_MODELS", ("no_such_pipeline_xx",))
    try:
        assert extract_nouns("A man and a horse.") == ["man", "horse"]
    finally:
        cascade._spacy_pipeline.cache_clear()


class FakeDetector:
    """Finds only the nouns it knows, at fixed boxes; records the phrases it was asked for."""

    def __init__(self, known):
        self.known, self.asked = known, []

    def detect(self, images, phrases, box_threshold=0.3, text_threshold=0.25):
        self.asked.append(list(phrases))
        return [[Detection(p, 0.8, box) for p in phrases for box in self.known.get(p, [])]]


def test_ground_answer_reports_found_and_missing_nouns_and_draws_them():
    img = Image.new("RGB", (100, 80), (128, 128, 128))
    det = FakeDetector({"man": [(10.0, 10.0, 40.0, 70.0)], "brown horse": [(50.0, 20.0, 90.0, 60.0)] * 2})
    res = ground_answer(det, img, "A man is riding a brown horse next to the river.")
    assert det.asked == [["man", "brown horse", "river"]]  # one detector call for all nouns
    assert list(res.found) == ["man", "brown horse"] and len(res.found["brown horse"]) == 2
    assert res.missing == ["river"]
    assert res.summary() == "found: man (1), brown horse (2); not found: river"
    assert res.image.getpixel((10, 40)) != (128, 128, 128) and img.getpixel((10, 40)) == (128, 128, 128)


def test_ground_answer_without_nouns_skips_the_detector():
    det = FakeDetector({})
    res = ground_answer(det, Image.new("RGB", (10, 10)), "It looks nice.")
    assert det.asked == [] and res.summary() == "no nouns to ground in the answer"
    assert CascadeResult(nouns=["x"]).missing == ["x"]


def test_ground_answer_with_the_tiny_detector():
    from ibllm_agent.tools.tiny import tiny_detector

    img = Image.new("RGB", (128, 128), (40, 40, 40))
    res = ground_answer(tiny_detector(), img, "A cat sits near a red box.", box_threshold=0.0, text_threshold=0.0)
    assert res.nouns == ["cat", "red box"]
    assert set(res.found) <= {"cat", "red box"} and res.found and res.image.size == (128, 128)


def test_run_ground_adds_the_cascade_to_the_turn(tmp_path, monkeypatch):
    import json

    from PIL import ImageDraw
    from typer.testing import CliRunner

    from ibllm_agent.cli import _register_all, app
    from ibllm_agent.cli import tool as tool_cli
    from ibllm_agent.tools.tiny import tiny_detector

    if not app.registered_commands:
        _register_all()
    det = tiny_detector()
    monkeypatch.setattr(tool_cli, "TOOL_LOADERS", {"groundingdino": lambda device: det})
    photo = tmp_path / "photo.png"
    img = Image.new("RGB", (128, 96), (40, 40, 40))
    ImageDraw.Draw(img).rectangle((30, 20, 90, 70), fill=(200, 30, 30))
    img.save(photo)
    script = tmp_path / "out.json"
    script.write_text(json.dumps(["Thought: Do I need to use a tool? No\nAI: A cat sits near a red box."]))
    res = CliRunner().invoke(app, ["run", "what is this?", "--image", str(photo), "--model", f"scripted:{script}",
                                   "--workspace", str(tmp_path / "ws"), "--memory", "memory",
                                   "--ground", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    g = data["grounding"]
    assert g["image"] == data["attachments"][0] and g["nouns"] == ["cat", "red box"]
    assert sorted([*g["found"], *g["missing"]]) == ["cat", "red box"]
    expected = det.detect([Image.open(tmp_path / "ws" / "threads" / data["thread_id"] / g["image"]).convert("RGB")],
                          ["cat", "red box"])[0]
    assert sum(len(v) for v in g["found"].values()) == len(expected)
    if expected:
        assert (tmp_path / "ws" / "threads" / data["thread_id"] / g["file"]).is_file()
