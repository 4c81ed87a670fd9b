"""Tool registry: exact GPT4Tools names/descriptions, @tool functions, entry points of packages."""

from __future__ import annotations

import pytest
from agent_support import install_fake_plugin, use_plugin
from ibllm_agent.tools.catalog import RUNTIME_DESCRIPTIONS, TRAINING_DESCRIPTIONS
from langchain_core.tools import tool

from ibllm_agent.agent.registry import ToolRegistry, default_registry, gpt4tools_tool, path_fields_of
from ibllm_agent.errors import ToolRegistryError


def test_gpt4tools_tool_has_exact_name_description_and_fields():
    t = gpt4tools_tool("Replace Something From The Photo", lambda image_path, object, replacement: "x")
    assert t.name == "Replace Something From The Photo"
    assert t.description == RUNTIME_DESCRIPTIONS[t.name]  # trailing space kept
    assert list(t.args) == ["image_path", "object", "replacement"]
    assert path_fields_of(t) == ("image_path",)
    t2 = gpt4tools_tool("Detect the Give Object", lambda image_path, object: "", description_variant="training")
    assert t2.description == TRAINING_DESCRIPTIONS["Detect the Give Object"]
    with pytest.raises(ToolRegistryError, match="not a GPT4Tools tool"):
        gpt4tools_tool("Detect The Given Object", lambda image_path: "")


def test_register_functions_and_tools():
    reg = ToolRegistry()

    def area(width: float, height: float) -> float:
        """Area of a rectangle."""
        return width * height

    @tool
    def inspect_file(image_path: str) -> str:
        """Describe a file."""
        return image_path

    reg.register(area)
    reg.register(inspect_file)
    assert reg.names() == ["area", "inspect_file"]
    assert reg.get("area").invoke({"width": 2, "height": 3}) == 6
    assert path_fields_of(reg.get("inspect_file")) == ("image_path",)
    assert path_fields_of(reg.get("area")) == ()
    with pytest.raises(ToolRegistryError, match="already registered"):
        reg.register(area)
    reg.register(area, replace=True)

    def nodoc(x: int) -> int:
        return x

    with pytest.raises(ToolRegistryError, match="needs a docstring"):
        reg.register(nodoc)
    with pytest.raises(ToolRegistryError, match="no tool named 'missing'; registered: area, inspect_file"):
        reg.get("missing")
    t = reg.register(lambda note: note, name="keep", description="Keep a note.", path_fields=["note"])
    assert path_fields_of(t) == ("note",)
    with pytest.raises(ToolRegistryError, match="no argument"):
        reg.register(area, name="area2", path_fields=["depth"])


def test_user_tool_with_a_gpt4tools_name_gets_the_exact_description():
    @tool("Get Photo Description")
    def my_captioner(image_path: str) -> str:
        """My own captioner."""
        return "caption"

    reg = ToolRegistry()
    assert reg.register(my_captioner).description == RUNTIME_DESCRIPTIONS["Get Photo Description"]
    reg_t = ToolRegistry(description_variant="training")
    assert reg_t.register(my_captioner).description == TRAINING_DESCRIPTIONS["Get Photo Description"]


def test_entry_points_of_an_installed_package(tmp_path, monkeypatch):
    use_plugin(monkeypatch, install_fake_plugin(tmp_path / "plugins"))
    reg = default_registry()
    assert reg.names() == [
        "Get Photo Description", "Edge Detection On Image", "Generate Image From User Input Text",
        "Answer Question About The Image", "word_count",
    ]
    assert reg.sources["word_count"].startswith("entry point words = fake_ibllm_tools:word_count")
    assert "fake-ibllm-tools" in reg.sources["word_count"]
    assert reg.get("word_count").invoke({"text": "a b c"}) == 3
    assert default_registry() is reg  # loaded once


@pytest.mark.parametrize(
    "line,match",
    [
        ("broken = no_such_module_xyz:thing\n", "cannot load tool entry point broken = no_such_module_xyz:thing"),
        ("bad = fake_ibllm_tools:CALLS\n", "entry point bad = fake_ibllm_tools:CALLS"),
    ],
)
def test_bad_entry_points_are_typed_errors(tmp_path, monkeypatch, line, match):
    use_plugin(monkeypatch, install_fake_plugin(tmp_path / "plugins", extra_entry_points=line))
    with pytest.raises(ToolRegistryError, match=match):
        ToolRegistry().load_entry_points()
