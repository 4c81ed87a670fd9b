"""The GPT4Tools step as a grammar for guided decoding: ``StepGuide``.

Between the text protocol (``protocol``) and the decoding engine (``model.guidance``): the model
still decides whether to use a tool (the ``Thought`` line is free) and writes its answers freely,
but once it has said ``Thought: Do I need to use a tool? Yes``:

1. the next line must be ``Action: <name>`` with one of the offered tool names — the names are
   scored as whole options (``Choose``), so the model's preference for any of a name's tokens counts,
   not only for its first;
2. the line after it must be ``Action Input: …``, and (with ``arguments=True`` and the tool's JSON
   schema) its comma-separated values must fit the parameters in declared order: integers, numbers,
   booleans and enums are held to their form, a required value may not be empty, the line may not
   end before every required value is there (a value the model ends early is closed by the ``,``
   separator), numbers stop at 17 characters, and only the last parameter, when it is a string, takes the remaining commas —
   exactly what ``protocol.map_arguments`` accepts. A file parameter (a string named ``*_path``,
   GPT4Tools' ``image_path`` / ``audio_path`` / ``video_path``), when the guide knows the files the
   conversation names (``files``), takes one of them, chosen like the tool name: each scored whole.

A guide is built per call from the tools shown in the prompt (``StepGuide(tools, prefill)``) or,
for raw GPT4Tools prompts, from the prompt's ``[names]`` list (``StepGuide.from_prompt``; names
only, since such prompts carry no schemas).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ibllm_agent import protocol as P
from ibllm_agent.model.guidance import Choose, Filter

__all__ = ["StepGuide"]

_ACTION = "Action:"
_INPUT = "Action Input:"
_NAMES_RE = re.compile(r"should be one of \[(.*?)\]")
_PARTIAL = {
    "integer": re.compile(r"-?\d*"),
    "number": re.compile(r"-?\d*\.?\d*(?:[eE][-+]?\d*)?"),
}
_WHOLE = {
    "integer": re.compile(r"-?\d+"),
    "number": re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"),
}
_MAX_NUMBER = 17
_BOOLEANS = ("true", "false", "yes", "no")


class StepGuide:
    """The grammar of one GPT4Tools step over ``tools`` (see the module docstring).

    ``prefill``: text forced before the generated completion (the chat model's ``tool_choice``
    prefill); the grammar reads ``protocol.join_prefill(prefill, completion)``. ``files``: the
    workspace file names a file parameter may take (the chat model passes those its prompt names,
    ``protocol.file_names``); empty: file parameters are plain strings.
    """

    def __init__(self, tools: Sequence[P.ToolSpec | Mapping[str, Any]], prefill: str = "", *, arguments: bool = True,
                 files: Sequence[str] = ()):
        specs = [P.tool_spec(t) for t in tools]
        self.tools = {t.name: t for t in specs}
        self.prefill = prefill
        self.arguments = arguments
        self.files = tuple(files)

    @classmethod
    def from_prompt(cls, prompt: str) -> StepGuide | None:
        """A names-only guide from a GPT4Tools prompt's ``should be one of [A, B]`` list (the last
        one in the prompt); None when the prompt has none."""
        found = _NAMES_RE.findall(prompt)
        names = [n.strip() for n in found[-1].split(", ")] if found else []
        names = [n for n in names if n]
        return cls([P.ToolSpec(n) for n in names], arguments=False) if names else None

    def __repr__(self) -> str:
        return f"StepGuide({list(self.tools)}, arguments={self.arguments})"

    # -- the engine's question -------------------------------------------------------------------
    def constraint(self, text: str) -> Choose | Filter | None:
        full = P.join_prefill(self.prefill, text)
        lines = full.split("\n")
        yes = _yes_line(lines)
        if yes is None or not 1 < len(lines) - yes <= 3:
            return None  # no tool decided yet (or the Yes line not ended), or the Action Input line is complete
        after = lines[yes + 1:]
        if len(after) == 1 and after[0].lstrip() in (_ACTION, _ACTION + " "):
            space = "" if after[0].endswith(" ") else " "
            return Choose(lines[yes] + "\n" + after[0], tuple(f"{space}{n}\n" for n in self.tools))
        instead = None
        if len(after) == 2 and after[1].startswith(_INPUT):
            tool = self.tools.get(_action_name(after[0]))
            rest = after[1][len(_INPUT):]
            files = self._file_choice(tool, rest)
            if files:
                return Choose(lines[yes + 1] + "\n" + after[1], files)
            if not self._args_ok(tool, rest, complete=True) and self._args_ok(tool, rest + ",", complete=False):
                instead = ","
        return Filter(self._viable, end_ok=self._viable(text + "\n", closed=True), instead_of_end=instead)

    # -- the grammar -------------------------------------------------------------------------------
    def _viable(self, text: str, *, closed: bool = False) -> bool:
        """Whether ``text`` (a completion) can still become a valid step; ``closed``: the step must be
        complete (its Action Input line ended)."""
        lines = P.join_prefill(self.prefill, text).split("\n")
        yes = _yes_line(lines)
        if yes is None:
            return not closed
        after = lines[yes + 1:]
        if not after:
            return not closed
        action = after[0].lstrip()
        if len(after) == 1:
            if closed:
                return False
            named = action[len(_ACTION) + 1:]
            return (_ACTION + " ").startswith(action) or (
                action.startswith(_ACTION + " ") and any(n.startswith(named) for n in self.tools)
            )
        name = _action_name(after[0])
        if name not in self.tools or action.rstrip() != f"{_ACTION} {name}":
            return False
        line = after[1]
        if len(after) == 2:
            if closed:
                return False
            return _INPUT.startswith(line) or (
                line.startswith(_INPUT) and self._args_ok(self.tools[name], line[len(_INPUT):], complete=False)
            )
        return line.startswith(_INPUT) and self._args_ok(self.tools[name], line[len(_INPUT):], complete=True)

    def _file_choice(self, tool: P.ToolSpec | None, rest: str) -> tuple[str, ...]:
        """Options for a file parameter whose value starts right after ``rest`` (``Action Input:`` or a
        comma): `` {file}`` followed by ``,`` when a later value is required, ``\n`` when none is
        left, either when the rest is optional. Empty when the next value is not a file's."""
        if not (self.arguments and self.files and tool is not None) or (rest and not rest.endswith(",")):
            return ()
        names = tool.param_names
        k = rest.count(",") if len(names) > 1 else (0 if not rest else len(names))
        if k >= len(names) or not _is_file_param(names[k], tool.parameters["properties"][names[k]]):
            return ()
        required = set(tool.required)
        ends = []
        if k < len(names) - 1:
            ends.append(",")
        if not any(n in required for n in names[k + 1:]):
            ends.append("\n")
        return tuple(f" {f}{end}" for f in self.files for end in ends)

    def _args_ok(self, tool: P.ToolSpec | None, rest: str, *, complete: bool) -> bool:
        """``rest`` (after ``Action Input:``) can still be (``complete``: is) a valid argument string."""
        if rest and not rest.startswith(" ") or rest.startswith("  "):
            return False  # "Action Input: value": one space after the colon
        rest = rest[1:]
        if not self.arguments or tool is None:
            return True
        props: Mapping[str, Any] = (tool.parameters or {}).get("properties", {}) or {}
        names = list(props)
        if not names:
            return True
        required = set(tool.required)
        parts = rest.split(",") if len(names) > 1 else [rest]
        fields = parts if len(parts) < len(names) else parts[: len(names) - 1] + [",".join(parts[len(names) - 1:])]
        for k, value in enumerate(fields):
            done = complete or k < len(fields) - 1
            if not _value_ok(value, props[names[k]], done=done, required=names[k] in required, first=k == 0):
                return False
            if self.files and _is_file_param(names[k], props[names[k]]):
                value = value[1:] if k and value.startswith(" ") else value
                if not (value in self.files if done else any(f.startswith(value) for f in self.files)):
                    return False
        need = max((i + 1 for i, n in enumerate(names) if n in required), default=0)
        return not complete or len(fields) >= need


def _is_file_param(name: str, schema: Any) -> bool:
    return name.endswith("_path") and P.json_kind(schema if isinstance(schema, Mapping) else {}) in ("string", None)


def _yes_line(lines: list[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if line.strip() == P.THOUGHT_YES), None)


def _action_name(line: str) -> str:
    return line.strip()[len(_ACTION):].strip()


def _value_ok(value: str, schema: Any, *, done: bool, required: bool, first: bool) -> bool:
    """One comma-separated value: still possible (``done`` False) or complete (``done`` True)."""
    if not first:  # values after a comma take one space
        value = value.removeprefix(" ")
        if value.startswith(" "):
            return False
    schema = schema if isinstance(schema, Mapping) else {}
    enum = schema.get("enum")
    kind = P.json_kind(schema)
    if enum:
        options = [_json_text(e) for e in enum]
        return value in options if done else any(o.startswith(value) for o in options)
    if kind in _PARTIAL:
        # at most 16 digits (JSON numbers are exact to 2**53), so a value always comes to an end
        return len(value) <= _MAX_NUMBER and bool((_WHOLE if done else _PARTIAL)[kind].fullmatch(value))
    if kind == "boolean":
        low = value.lower()
        return low in _BOOLEANS if done else any(b.startswith(low) for b in _BOOLEANS)
    if kind == "string" and done and required:
        return bool(P.unquote(value))
    return True


def _json_text(value: Any) -> str:
    """How an enum value is written in an Action Input (strings bare, others as JSON)."""
    import json

    return value if isinstance(value, str) else json.dumps(value)
