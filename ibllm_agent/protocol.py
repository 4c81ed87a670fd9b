"""The GPT4Tools text protocol as pure functions: render a ReAct prompt, parse a model step.

GPT4Tools fine-tuned its LLM on LangChain 0.0.101's ``conversational-react-description`` prompt, so the
weights depend on that text byte for byte. One prompt is four blocks joined by a blank line::

    PREFIX \\n\\n TOOL LINES \\n\\n FORMAT_INSTRUCTIONS \\n\\n SUFFIX (+ scratchpad)

- tool lines: ``> {name}: {description}``, one per tool, and ``[{names}]`` in the format block;
- history (``{chat_history}``): ``Human:``/``AI:`` lines of final answers and media announcements;
- scratchpad: earlier steps of the current turn, each the model's raw text + ``\\nObservation: …\\n``.

The model answers either ``Thought: Do I need to use a tool? Yes`` / ``Action: {tool}`` /
``Action Input: {comma separated args}`` (then it would write ``Observation:``, where generation is
stopped) or ``Thought: Do I need to use a tool? No`` / ``AI: {answer}``. ``parse_step`` reads that
text into a ``ParsedStep``; ``map_arguments`` maps the single ``Action Input`` string onto a tool's
JSON schema with GPT4Tools' comma semantics.

Nothing here imports LangChain: tools arrive as OpenAI-format dicts (what
``convert_to_openai_tool`` returns) or ``ToolSpec`` values.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ibllm_agent import stops as stops_mod
from ibllm_agent.errors import ConfigError, ToolArgumentError
from ibllm_agent.prompts import gpt4tools_blocks

Variant = Literal["training", "demo"]
HistoryPolicy = Literal["last_exchange", "full"]

# The 0.0.10x agent's stop strings: the observation prefix, right-stripped, after a newline.
STOP_SEQUENCES: tuple[str, ...] = ("\nObservation:", "\n\tObservation:")
THOUGHT_YES = "Thought: Do I need to use a tool? Yes"
THOUGHT_NO = "Thought: Do I need to use a tool? No"
HUMAN_PREFIX = "Human"
AI_PREFIX = "AI"

# Legacy ConvoOutputParser regex; no DOTALL, so the action input is one line.
_ACTION_RE = re.compile(r"Action: (.*?)[\n]*Action Input: (.*)")
_ACTION_ONLY_RE = re.compile(r"^\s*Action:\s*(.*)$", re.MULTILINE)
_THOUGHT_RE = re.compile(r"^\s*Thought:\s*(.*)$", re.MULTILINE)
_WORD_RE = re.compile(r"[a-z0-9]+")
# Words too common in tool descriptions to say anything about relevance.
_STOPWORDS = frozenset(
    ["a", "an", "the", "of", "to", "and", "or", "in", "on", "for", "is", "be", "this", "that", "with", "as", "it", "its", "from", "by", "at", "you", "want", "useful", "when", "input", "tool", "should", "string", "representing", "like", "image_path", "path", "image", "photo", "picture"]
)

# How media other than images are announced (GPT4Tools only ever announced images; the wording for
# the other modalities is ours): modality -> (noun with article, noun).
_MODALITY_NOUNS: dict[str, tuple[str, str]] = {
    "image": ("an image", "image"),
    "video": ("a video", "video"),
    "audio": ("an audio clip", "audio clip"),
    "point": ("a point cloud", "point cloud"),
    "depth": ("a depth map", "depth map"),
    "thermal": ("a thermal image", "thermal image"),
    "imu": ("an IMU recording", "IMU recording"),
    "text": ("a text", "text"),
}
_MODALITY_EXT = {
    "image": ".png", "video": ".mp4", "audio": ".wav", "point": ".ply",
    "depth": ".png", "thermal": ".png", "imu": ".npy", "text": ".txt",
}


# -- tools ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolSpec:
    """What the protocol needs to know about a tool: name, description and JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def param_names(self) -> list[str]:
        """Declared parameter names, in order (the order GPT4Tools' comma split fills them)."""
        return list((self.parameters or {}).get("properties", {}) or {})

    @property
    def required(self) -> list[str]:
        return list((self.parameters or {}).get("required", []) or [])


def tool_spec(tool: ToolSpec | Mapping[str, Any]) -> ToolSpec:
    """A ``ToolSpec`` from an OpenAI-format tool dict (``{"type": "function", "function": {...}}``),
    a bare function dict (``{"name", "description", "parameters"}``) or a ``ToolSpec``."""
    if isinstance(tool, ToolSpec):
        return tool
    if not isinstance(tool, Mapping):
        raise ConfigError(f"a tool must be an OpenAI-format dict or ToolSpec, got {type(tool).__name__}")
    fn = tool.get("function", tool)
    name = fn.get("name")
    if not name or not isinstance(name, str):
        raise ConfigError(f"tool {dict(tool)!r} has no name")
    return ToolSpec(name=name, description=fn.get("description") or "", parameters=fn.get("parameters") or {})


_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false", "array": "a JSON list",
               "object": "a JSON object"}


def input_sentence(tool: ToolSpec) -> str:
    """GPT4Tools' own way of stating a tool's inputs, for tools whose description does not (LangChain
    tools usually describe only what they do): ``The input to this tool should be a string,
    representing the city`` / ``… a comma separated string of two, representing the setup, the
    punchline``. Empty for tools without parameters or whose description already says it."""
    props = (tool.parameters or {}).get("properties", {}) or {}
    if not props or "The input to this tool" in tool.description:
        return ""
    if len(props) == 1:
        (name, schema), = props.items()
        kind = schema.get("type") if isinstance(schema, Mapping) else None
        kind_text = _TYPE_WORDS.get(kind, "a string") if isinstance(kind, str) else "a string"
        return f"The input to this tool should be {kind_text}, representing the {name}"
    count = _COUNT_WORDS[len(props)] if len(props) < len(_COUNT_WORDS) else str(len(props))
    names = ", ".join(f"the {n}" for n in props)
    return f"The input to this tool should be a comma separated string of {count}, representing {names}"


def render_tool_line(tool: ToolSpec) -> str:
    """``> {name}: {description}`` (+ `` {input_sentence}`` when the description lacks it)."""
    extra = input_sentence(tool)
    desc = tool.description.strip() if extra else tool.description
    text = f"{desc} {extra}" if desc and extra else (desc or extra)
    return f"> {tool.name}: {text}"


def render_tool_lines(tools: Sequence[ToolSpec]) -> str:
    """The tool lines (``render_tool_line``) joined by newlines (the legacy agent's tool block)."""
    return "\n".join(render_tool_line(t) for t in tools)


def render_tool_names(tools: Sequence[ToolSpec]) -> str:
    """The ``{tool_names}`` slot: names joined by ``", "``."""
    return ", ".join(t.name for t in tools)


def _words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def relevance(tool: ToolSpec, query: str) -> float:
    """Word-overlap score of a tool against the user's text; name words count double."""
    q = _words(query)
    if not q:
        return 0.0
    return 2.0 * len(q & _words(tool.name)) + len(q & _words(tool.description))


def select_tools(
    tools: Sequence[ToolSpec], query: str, max_tools: int | None = 5, required: Iterable[str] = ()
) -> list[ToolSpec]:
    """At most ``max_tools`` tools, the most relevant to ``query`` first.

    GPT4Tools trained on prompts of 2–5 tools; the full 23-tool block would not even fit the 2048-token
    training length. ``required`` names (a forced ``tool_choice``, tools already called this turn) are
    always kept (even beyond ``max_tools``). Ties keep the caller's order (stable sort). ``max_tools``
    of ``None`` or ``<= 0`` keeps every tool (still sorted by relevance).
    """
    req = set(required)
    # Rank by relevance, ties in the caller's order (stable), then keep the required tools plus the
    # best of the rest. The shown order is the ranking, so it stays the same across the steps of a
    # turn even when a tool becomes required because it was called.
    ranked = sorted(tools, key=lambda t: -relevance(t, query))
    if max_tools is None or max_tools <= 0:
        return ranked
    n_forced = sum(1 for t in ranked if t.name in req)
    free = max(max_tools - n_forced, 0)
    chosen = []
    for t in ranked:
        if t.name in req:
            chosen.append(t)
        elif free > 0:
            chosen.append(t)
            free -= 1
    return chosen


def match_tool_name(name: str, names: Sequence[str], cutoff: float = 0.8) -> str | None:
    """Map a model-emitted tool name onto a bound one: exact, case-insensitive, ignoring punctuation
    and spacing, then fuzzy (difflib ratio ≥ ``cutoff``). ``None`` when nothing is close enough."""
    name = name.strip().strip("\"'`[]").strip()
    if name in names:
        return name
    low = {n.lower(): n for n in names}
    if name.lower() in low:
        return low[name.lower()]
    squash = {"".join(_WORD_RE.findall(n.lower())): n for n in names}
    key = "".join(_WORD_RE.findall(name.lower()))
    if key in squash:
        return squash[key]
    close = difflib.get_close_matches(key, list(squash), n=1, cutoff=cutoff)
    return squash[close[0]] if close else None


# -- arguments -----------------------------------------------------------------------------------------
def json_kind(schema: Mapping[str, Any]) -> str | None:
    """A parameter's JSON type: ``type`` (the first non-null of a list, e.g. ``["string", "null"]``),
    else the first non-null ``anyOf`` member's; None when the schema names none."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None and "anyOf" in schema:
        kinds = [s.get("type") for s in schema["anyOf"] if isinstance(s, Mapping)]
        kind = next((k for k in kinds if k and k != "null"), "string")
    return kind if isinstance(kind, str) else None


def _coerce(value: str, schema: Mapping[str, Any], tool: str, param: str) -> Any:
    """Convert one comma-split string to the parameter's JSON type."""
    kind = json_kind(schema)
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "boolean":
            low = value.lower()
            if low in ("true", "yes", "1"):
                return True
            if low in ("false", "no", "0"):
                return False
            raise ValueError(value)
        if kind in ("array", "object"):
            parsed = json.loads(value)
            if (kind == "array") != isinstance(parsed, list):
                raise ValueError(value)
            return parsed
    except ValueError:
        raise ToolArgumentError(
            f"tool {tool!r}: argument {param!r} expects {kind}, got {value!r}"
        ) from None
    return value


def map_arguments(raw: str, tool: ToolSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Map one GPT4Tools ``Action Input`` string onto the tool's parameters.

    - no parameters → ``{}``;
    - a JSON object whose keys are parameter names → used as is (models that answer in JSON);
    - one parameter → the whole string (commas included), e.g. ``{"__arg1": raw}`` for legacy tools;
    - N parameters → split on commas in declared order; the remainder, commas included, joins the last
      filled field (GPT4Tools' ``image_path, rest of string``); fewer values than required parameters
      raises ``ToolArgumentError``. Optional parameters past the given values are left out.

    Values are stripped of spaces and a pair of surrounding double quotes (the legacy parser stripped
    the whole input of ``"``), then converted to the parameter's JSON type.
    """
    spec = tool_spec(tool)
    props: Mapping[str, Any] = (spec.parameters or {}).get("properties", {}) or {}
    names = list(props)
    raw = raw.strip()
    if not names:
        return {}
    if raw.startswith("{"):
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj and set(obj) <= set(names):
            return obj
    stripped = unquote(raw)
    if len(names) == 1:
        _check_filled(spec, names[0], stripped, names[0] in set(spec.required), raw)
        return {names[0]: _coerce(stripped, props[names[0]], spec.name, names[0])}
    required = [n for n in names if n in set(spec.required)]
    pieces = stripped.split(",")
    n_fill = min(len(pieces), len(names))
    if n_fill < len(required) or not stripped:
        raise ToolArgumentError(
            f"tool {spec.name!r} expects {len(required)} comma-separated value(s) "
            f"({', '.join(required)}), got {0 if not stripped else len(pieces)}: {raw!r}"
        )
    # The first n_fill-1 fields take one piece each; the last filled field takes the remainder.
    values = [unquote(p) for p in pieces[: n_fill - 1]] + [unquote(",".join(pieces[n_fill - 1 :]))]
    for name, value in zip(names[:n_fill], values):
        _check_filled(spec, name, value, name in set(spec.required), raw)
    return {
        name: _coerce(value, props[name], spec.name, name)
        for name, value in zip(names[:n_fill], values)
    }


def _check_filled(spec: ToolSpec, name: str, value: str, required: bool, raw: str) -> None:
    """An empty required value is an invalid call the model reads, not a tool run on ``""``."""
    if required and not value:
        raise ToolArgumentError(
            f"tool {spec.name!r}: required argument {name!r} is empty in Action Input {raw[:200]!r}"
        )


def unquote(text: str, *, strip: bool = True) -> str:
    """``text`` without matching pairs of surrounding quotes (``"…"``, ``'…'`` or backticks), removed
    symmetrically: a quote without its partner stays, so the tool (or the workspace) reports the
    value as written instead of a silently different one."""
    text = text.strip() if strip else text
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip() if strip else text[1:-1]
    return text


def render_action_input(args: Mapping[str, Any], tool: ToolSpec | Mapping[str, Any] | None = None) -> str:
    """Inverse of ``map_arguments`` for replaying a tool call that has no raw text: values in declared
    order joined by ``", "`` (non-strings as JSON)."""
    order = tool_spec(tool).param_names if tool is not None else []
    keys = [k for k in order if k in args] + [k for k in args if k not in order]
    return ", ".join(v if isinstance(v, str) else json.dumps(v) for v in (args[k] for k in keys))


# -- parsing -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedStep:
    """One model step, read from its text.

    kind: ``"final"`` (an answer: ``answer`` holds it), ``"action"`` (``action``/``action_input``
    hold the raw tool name and input line) or ``"invalid"`` (``error`` says why; ``action`` and
    ``action_input`` hold whatever was found). ``thought`` is the first ``Thought:`` line's text
    (``"Do I need to use a tool? Yes"``), ``raw`` the text parsed (after cutting at an observation).
    ``protocol`` is false when the text had none of the protocol's markers (a plain reply).
    """

    kind: Literal["final", "action", "invalid"]
    raw: str
    thought: str | None = None
    action: str | None = None
    action_input: str | None = None
    answer: str | None = None
    error: str | None = None
    protocol: bool = True


def cut_at_stop(text: str, stops: Iterable[str] = STOP_SEQUENCES) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    return stops_mod.cut_at_stop(text, stops)


def _cut_observation(text: str) -> str:
    """Drop a hallucinated observation and everything after it (incl. ``Observation:`` at the start)."""
    text, _ = cut_at_stop(text, STOP_SEQUENCES)
    if text.lstrip().startswith("Observation:"):
        return ""
    return text


def parse_step(text: str) -> ParsedStep:
    """Parse one model output (already prefixed with any prefill) into a ``ParsedStep``; never raises.

    Rules, in order (the legacy ``ConvoOutputParser``, made total):
    1. Cut at the first ``\\nObservation:`` — whatever follows is the model imagining a tool result.
    2. ``AI:`` present → final answer = text after the last ``AI:``, stripped — unless a complete
       ``Action``/``Action Input`` pair comes before the first ``AI:`` (the model committed to a tool
       call and then imagined the rest without writing ``Observation:``; streaming sees it the same way).
    3. ``Action: …`` then ``Action Input: …`` (one line) → an action.
    4. ``Action:`` without ``Action Input:`` → invalid; a ``Yes`` thought without an action → invalid.
    5. A ``No`` thought with no ``AI:`` → final answer = the text after the thought line.
    6. No protocol marker at all → the whole text, stripped, is a plain answer (empty output → ``""``).
    """
    raw = _cut_observation(text)
    th = _THOUGHT_RE.search(raw)
    thought = th.group(1).strip() if th else None
    ai_first, ai_last = _ai_positions(raw)
    m = _ACTION_RE.search(raw)
    if ai_first >= 0 and not (m and m.end() <= ai_first):
        return ParsedStep("final", raw, thought, answer=raw[ai_last + len(AI_PREFIX) + 1 :].strip())
    if m:
        action, action_input = m.group(1).strip(), unquote(m.group(2).strip(" "), strip=False)
        if not action:
            return ParsedStep("invalid", raw, thought, "", action_input, error="empty tool name after 'Action:'")
        return ParsedStep("action", raw, thought, action, action_input)
    a = _ACTION_ONLY_RE.search(raw)
    if a:
        return ParsedStep(
            "invalid", raw, thought, a.group(1).strip(),
            error=f"'Action: {a.group(1).strip()}' is not followed by an 'Action Input:' line",
        )
    if thought is not None:
        if re.search(r"\byes\b", thought, re.IGNORECASE):
            return ParsedStep(
                "invalid", raw, thought, error="the model decided to use a tool but named no 'Action:'"
            )
        rest = raw[th.end():].strip() if th else raw.strip()
        return ParsedStep("final", raw, thought, answer=rest)
    return ParsedStep("final", raw, None, answer=raw.strip(), protocol=False)


def _ai_positions(raw: str) -> tuple[int, int]:
    """First and last index of an ``AI:`` prefix that is not the end of a word (``OpenAI:``); -1 if none."""
    found = [m.start() for m in re.finditer(rf"{AI_PREFIX}:", raw) if m.start() == 0 or not raw[m.start() - 1].isalnum()]
    return (found[0], found[-1]) if found else (-1, -1)


# -- rendering -----------------------------------------------------------------------------------------
def media_name(modality: str, source: Any) -> str:
    """A stable workspace-style name for an attachment without one: ``{modality}/{sha1[:8]}{ext}``.

    Same bytes (or same path string) → same name, so replays of a thread render the same prompt.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = str(source).encode("utf-8", "replace")
    digest = hashlib.sha1(data).hexdigest()[:8]
    folder = "image" if modality in ("depth", "thermal") else modality
    return f"{folder}/{digest}{_MODALITY_EXT.get(modality, '.bin')}"


_FOLDERS = sorted({"image" if m in ("depth", "thermal") else m for m in _MODALITY_EXT})  # media_name's folders
_FILE_NAME_RE = re.compile(r"(?<![\w/.-])(?:" + "|".join(_FOLDERS) + r")/[\w-]+\.[A-Za-z0-9]+")


def file_names(text: str) -> list[str]:
    """The workspace-style file names (``image/ab12cd34.png``, ``audio/….wav`` …: ``media_name``'s
    folders) that ``text`` mentions, in order of first mention."""
    return list(dict.fromkeys(m.rstrip(".") for m in _FILE_NAME_RE.findall(text)))


def default_description(modality: str) -> str:
    """The ``Description:`` used when nothing captioned an attachment. (ImageBind-LLM receives the
    attachment itself; the announcement mainly tells the protocol the file's name.)"""
    return f"An attached {_MODALITY_NOUNS.get(modality, (modality, modality))[1]}."


def render_announcement(
    name: str, modality: str = "image", description: str | None = None, variant: Variant = "training"
) -> tuple[str, str]:
    """The ``(Human line, AI line)`` announcing an attachment, as in GPT4Tools' training data:
    ``Human: Provide an image named {name}. Description: {caption} Understand the image using tools.``
    / ``AI: Received.`` (the demo variant says ``The description is: {caption}.``)."""
    a_kind, kind = _MODALITY_NOUNS.get(modality, (f"a {modality}", modality))
    text = (
        gpt4tools_blocks(variant)[3]
        .replace("{a_kind}", a_kind)
        .replace("{kind}", kind)
        .replace("{name}", name)
        .replace("{description}", description if description is not None else "")
    )
    human, _, ai = text.partition("\n")
    return human, ai


@dataclass(frozen=True)
class Exchange:
    """One history entry: a human line and the AI's final answer (``None`` if it never answered)."""

    human: str
    ai: str | None = None

    def render(self) -> str:
        lines = self.human if self.human.startswith(f"{HUMAN_PREFIX}: ") else f"{HUMAN_PREFIX}: {self.human}"
        if self.ai is None:
            return lines
        ai = self.ai if self.ai.startswith(f"{AI_PREFIX}:") else f"{AI_PREFIX}: {self.ai}"
        return f"{lines}\n{ai}"


def render_history(
    exchanges: Sequence[Exchange],
    policy: HistoryPolicy = "last_exchange",
    *,
    fits: Any | None = None,
) -> str:
    """The ``{chat_history}`` text.

    ``last_exchange`` (GPT4Tools' ``cut_dialogue_history``): only the last exchange — in training
    ``chat_history`` is empty or exactly one image announcement. ``full``: every exchange, dropping
    the oldest while ``fits(text)`` (a callable returning whether the text fits the context budget)
    says no.
    """
    if policy not in ("last_exchange", "full"):
        raise ConfigError(f"unknown history policy {policy!r}; known: ['full', 'last_exchange']")
    items = list(exchanges)
    if policy == "last_exchange":
        items = items[-1:]
    text = "\n".join(e.render() for e in items)
    while fits is not None and items and not fits(text):
        items = items[1:]
        text = "\n".join(e.render() for e in items)
    return text


@dataclass(frozen=True)
class ScratchStep:
    """An earlier step of the current turn: the model's text for it and the tool's observation."""

    text: str
    observation: str


def render_step_text(action: str, action_input: str) -> str:
    """Canonical text of a tool step that has no raw model text to replay."""
    return f"{THOUGHT_YES}\nAction: {action}\nAction Input: {action_input}"


def cut_observation(text: str, max_chars: int) -> str:
    """``text`` when it fits in ``max_chars``, else its head plus a note saying how much was left out
    (total ≤ ``max_chars``; the note is what the model reads instead of the rest)."""
    if len(text) <= max_chars:
        return text
    note = "\n[observation cut: {total} characters, the first {kept} shown]"
    kept = max(0, max_chars - len(note.format(total=len(text), kept=max_chars)))
    return text[:kept] + note.format(total=len(text), kept=kept)


MIN_OBSERVATION_CHARS = 200


def fit_observations(steps: Sequence[ScratchStep], fits: Callable[[Sequence[ScratchStep]], bool]) -> list[ScratchStep]:
    """``steps`` with the longest observations cut (halved, at least ``MIN_OBSERVATION_CHARS`` kept,
    each with a note) until ``fits(steps)``; unchanged when they fit. Observations are always cut
    from their full text, so notes never pile up."""
    out = list(steps)
    limits = [len(s.observation) for s in steps]
    while not fits(out):
        i = max(range(len(out)), key=lambda j: limits[j], default=None)
        if i is None or limits[i] <= MIN_OBSERVATION_CHARS:
            break  # nothing left to cut: the history policy and the model's own check take over
        limits[i] = max(MIN_OBSERVATION_CHARS, limits[i] // 2)
        out[i] = ScratchStep(steps[i].text, cut_observation(steps[i].observation, limits[i]))
    return out


def render_scratchpad(steps: Sequence[ScratchStep]) -> str:
    """Earlier steps as the training data laid them out: ``{text}\\nObservation: {result}\\n`` each.

    (The demo's LLM wrapper removed the legacy trailing ``Thought:`` and collapsed duplicate
    ``Observation:`` lines, so both variants end up with exactly this layout.)
    """
    return "".join(f"{s.text}\nObservation: {s.observation}\n" for s in steps)


def render_prompt(
    tools: Sequence[ToolSpec],
    user_input: str,
    *,
    chat_history: str = "",
    scratchpad: str = "",
    variant: Variant = "training",
    system: str | None = None,
) -> str:
    """The whole GPT4Tools prompt: PREFIX, tool lines, FORMAT_INSTRUCTIONS, SUFFIX joined by ``\\n\\n``,
    with the scratchpad after ``Let's think step by step.\\n``.

    ``system`` (a LangChain SystemMessage) is put before the PREFIX, separated by a blank line, so the
    trained PREFIX stays verbatim. Slots are filled with ``str.replace`` so braces in user text stay.
    """
    prefix, fmt, suffix, _ = gpt4tools_blocks(variant)
    fmt = fmt.replace("{tool_names}", render_tool_names(tools)).replace("{ai_prefix}", AI_PREFIX)
    # Fill {input} last: user text must never be scanned for the other slots.
    suffix = suffix.replace("{chat_history}", chat_history)
    if "{agent_scratchpad}" in suffix:
        suffix = suffix.replace("{agent_scratchpad}", scratchpad)
    else:
        suffix = suffix + scratchpad
    head, _, tail = suffix.partition("{input}")
    text = "\n\n".join([prefix, render_tool_lines(tools), fmt, head]) + user_input + tail
    return f"{system}\n\n{text}" if system else text


def prefill_for(tool_choice: str | None, tools: Sequence[ToolSpec]) -> str:
    """Text forced at the start of the model's answer for a ``tool_choice``.

    ``"any"``/``"required"`` → the ``Yes`` thought and ``Action:`` (and, with one tool, its name);
    a tool name → the ``Yes`` thought, ``Action: {name}`` and ``Action Input:``; ``"none"`` → the
    ``No`` thought and ``AI:``; ``None``/``"auto"`` → nothing. A prefill ends at the colon: the
    space after it belongs to the model's next token (SentencePiece ``▁value``), as in training.
    """
    if tool_choice in (None, "auto", ""):
        return ""
    if tool_choice == "none":
        return f"{THOUGHT_NO}\n{AI_PREFIX}:"
    if tool_choice in ("any", "required"):
        if len(tools) == 1:
            return f"{THOUGHT_YES}\nAction: {tools[0].name}\nAction Input:"
        return f"{THOUGHT_YES}\nAction:"
    return f"{THOUGHT_YES}\nAction: {tool_choice}\nAction Input:"


def join_prefill(prefill: str, text: str) -> str:
    """``prefill`` + the model's continuation, with the space after a prefill's final colon restored.

    A prefill ends at a colon (``Action:``) and the model's next token carries the space
    (SentencePiece ``▁value``); a SentencePiece decoder drops the leading space of the first piece it
    decodes, so the completion reads ``value``: the protocol line is ``Action: value``."""
    if prefill.endswith(":") and text and not text[0].isspace():
        return f"{prefill} {text}"
    return prefill + text


def after_prefill(prefill: str, text: str) -> str:
    """The model's continuation as it reads after ``prefill`` (``join_prefill`` minus the prefill)."""
    return join_prefill(prefill, text)[len(prefill):]


def tool_choice_name(tool_choice: Any) -> str | None:
    """Normalise LangChain/OpenAI ``tool_choice`` forms to ``None``, a keyword or a tool name."""
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        if isinstance(fn, Mapping) and fn.get("name"):
            return str(fn["name"])
        if tool_choice.get("name"):
            return str(tool_choice["name"])
        if tool_choice.get("type") in ("any", "required", "auto", "none"):
            return str(tool_choice["type"])
    raise ConfigError(f"unsupported tool_choice {tool_choice!r}")
