"""The GPT4Tools catalog matches the reference tool table byte for byte."""

from __future__ import annotations

import json

from conftest import shared_path
from ibllm_agent.tools import catalog


def test_catalog_matches_reference_json():
    ref = json.loads(shared_path("spec", "gpt4tools_tools.json").read_text(encoding="utf-8"))
    assert catalog.RUNTIME_DESCRIPTIONS == ref["runtime"]
    assert list(catalog.RUNTIME_DESCRIPTIONS) == list(ref["runtime"])  # demo registration order
    assert catalog.TRAINING_DESCRIPTIONS == ref["training"]
    assert catalog.TRAINING_OUTPUT_FORMAT == ref["training_output_format"]


def test_input_fields_follow_descriptions():
    assert set(catalog.INPUT_FIELDS) == set(catalog.RUNTIME_DESCRIPTIONS) | set(catalog.PROJECT_DESCRIPTIONS)
    for spec in [catalog.tool_spec(n) for n in catalog.ALL_TOOL_NAMES]:
        d = spec.runtime_description
        n = len(spec.input_fields)
        if "comma separated string of three" in d:
            assert n == 3, spec.name
        elif "comma separated string of two" in d:
            assert n == 2, spec.name
        else:
            assert n == 1, spec.name
        assert ("image_path" in spec.input_fields) == ("image_path" in d), spec.name


def test_tool_spec_variants_and_names():
    s = catalog.tool_spec("Detect the Give Object")  # the typo is the real name
    assert s.output == "text" and s.seen_in_training
    assert s.description("training") == catalog.TRAINING_DESCRIPTIONS["Detect the Give Object"]
    unseen = catalog.tool_spec("Generate Image Condition On Line Image")
    assert not unseen.seen_in_training and unseen.output == "image"
    assert unseen.description("training") == unseen.runtime_description
    assert catalog.tool_spec("Get Photo Description").description("runtime").endswith("image_path. ")
    assert len(catalog.TOOL_NAMES) == 24 and len(catalog.TRAINING_DESCRIPTIONS) == 23


def test_project_tools_follow_the_gpt4tools_style():
    assert not set(catalog.PROJECT_DESCRIPTIONS) & set(catalog.RUNTIME_DESCRIPTIONS)
    for name in ("Transcribe Speech From Audio", "Detect Objects In Video"):
        spec = catalog.tool_spec(name)
        assert spec.output == "text" and not spec.seen_in_training
        assert spec.description().startswith("useful when you want to")
        # the optional trailing field may be left out of the Action Input
        assert set(catalog.INPUT_DEFAULTS[name]) == {spec.input_fields[-1]}
    assert catalog.ALL_TOOL_NAMES[-2:] == ("Transcribe Speech From Audio", "Detect Objects In Video")
