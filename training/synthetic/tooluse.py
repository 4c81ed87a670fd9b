"""GPT4Tools-format tool-use samples: episodes (attachment, request, tool steps, answer) → samples.

An *episode* is one user turn: the tools shown (2–5: the needed ones plus shuffled distractors, as in
GPT4Tools' training data), the chat history (the attachment's announcement), the request, the tool
steps ``(tool, Action Input, observation)`` and the final answer, which repeats the observation's
content. Each assistant turn of an episode becomes one sample (GPT4Tools' ``--complement`` layout):
``instruction`` = the whole prompt (``protocol.render_prompt``, training variant) with the earlier steps
in the scratchpad, ``output`` = that turn (``Thought/Action/Action Input`` + ``Observation:``, or
``Thought ... No`` + ``AI: answer``).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any

from ibllm_agent.training.synthetic import text as T
from ibllm_agent.training.synthetic.media import object_box
from ibllm_agent.training.synthetic.tool_table import (
    CAPTION,
    CONDITION_NOUN,
    DETECT,
    MODALITY_FIND_TOOL,
    MODALITY_TOOL,
    PREREQUISITE,
    TRANSCRIBE,
    VIDEO_DETECT,
    conditional_templates,
    gen_tool,
    modality_templates,
    templates,
)

from ibllm_agent import protocol as P

_THINGS = ["a red car", "a cat on a sofa", "a house by a lake", "a yellow bird", "two dogs playing",
           "a mountain at sunset", "a bowl of fruit", "a robot reading a book", "a blue boat", "a snowy street"]
_STYLES = ["a watercolor painting", "a pencil drawing", "a cartoon", "an oil painting", "a mosaic", "pixel art"]
_NEW = ["cat", "dog", "flower", "ball", "cup", "star"]
_WORDS = ["please", "open", "close", "the", "red", "blue", "window", "door", "meet", "me", "at", "noon", "call",
          "tomorrow", "bring", "a", "green", "cup", "turn", "left", "right", "stop", "here", "thank", "you"]


@dataclass
class Step:
    tool: str
    action_input: str
    args: dict[str, str]
    observation: str


@dataclass
class Episode:
    """One user turn with its tool steps; ``kind``: tool, chain, modality, no_tool or function."""

    kind: str
    shown: list[Any]  # GenTool or FunctionTool: .name, .description, .openai()
    user: str
    history: str
    steps: list[Step]
    answer: str
    modality: str
    media: list[dict[str, str]] = field(default_factory=list)


def new_image_name(rng: random.Random) -> str:
    """GPT4Tools' training names: 8 lowercase letters + .png under image/."""
    return "image/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(8)) + ".png"


def _announce(item: dict[str, Any]) -> str:
    human, ai = P.render_announcement(item["name"], item["modality"], T.caption(item["scene"]))
    return f"{human}\n{ai}"


def _step(tool: str, values: list[str], observation: str) -> Step:
    spec = gen_tool(tool)
    args = dict(zip(spec.fields, values))
    return Step(tool, ", ".join(values), args, observation)


def _image_result(rng: random.Random) -> tuple[str, str]:
    name = new_image_name(rng)
    return name, rng.choice([f"Result saved as {name}", name])


def _saved_answer(rng: random.Random, name: str) -> str:
    return rng.choice([f"Result saved as {name}", f"Here is the result: {name}", f"I saved the new image as {name}."])


def _shown(rng: random.Random, needed: list[str], pool: list[str], extra: list[str] = ()) -> list[Any]:
    """The needed tools (+ ``extra`` competitors) + random distractors from ``pool``: 2–5 tools, shuffled."""
    names = list(dict.fromkeys([*needed, *extra]))
    target = max(len(names), rng.randint(2, 5))
    rest = [n for n in pool if n not in names]
    names += rng.sample(rest, min(target - len(names), len(rest)))
    rng.shuffle(names)
    return [gen_tool(n) for n in names]


def _fill(template: str, **slots: str) -> str:
    for k, v in slots.items():
        template = template.replace("{" + k + "}", v)
    return template


def _detections(scene: dict[str, Any], rng: random.Random, phrase: str) -> str:
    hits = [o for o in scene["objects"] if T.object_phrase(o) == phrase or o["shape"] in phrase.split()]
    if not hits:
        return f"No {phrase} found."
    parts = [f"{T.object_phrase(o)} {rng.uniform(0.5, 0.95):.2f} [{', '.join(map(str, object_box(o)))}]" for o in hits]
    return "; ".join(parts)


def image_episode(rng: random.Random, item: dict[str, Any], tool: str, split: str, pool: list[str]) -> Episode:
    """One single-tool request about an image."""
    scene, name = item["scene"], item["name"]
    obj = rng.choice(scene["objects"])
    phrase = T.object_phrase(obj)
    question, answer_text = rng.choice(T.questions(scene, rng)[:-1])
    slots = {"file": name, "obj": phrase, "text": rng.choice(_THINGS), "style": rng.choice(_STYLES),
                 "new": rng.choice(_NEW), "question": question, "question_lc": question[0].lower() + question[1:]}
    user = _fill(rng.choice(templates(tool, split)), **slots)
    spec = gen_tool(tool)
    if tool == CAPTION:
        obs = T.caption(scene)
        step, answer = _step(tool, [name], obs), rng.choice([obs, f"The image shows: {obs}"])
    elif tool == "Answer Question About The Image":
        step, answer = _step(tool, [name, question], answer_text), answer_text
    elif tool == DETECT:
        boxes = _detections(scene, rng, phrase)
        new = new_image_name(rng)
        step = _step(tool, [name, phrase], f"Result saved as {new}. Detected: {boxes}")
        answer = f"I found the {phrase}: {boxes}. Result saved as {new}"
    elif tool == "Generate Image From User Input Text":
        new, obs = _image_result(rng)
        step, answer = _step(tool, [slots["text"]], obs), _saved_answer(rng, new)
    else:
        values = {"image_path": name, "object": phrase, "text": slots["style"], "replacement": slots["new"],
                  "description": slots["text"]}
        new, obs = _image_result(rng)
        step, answer = _step(tool, [values[f] for f in spec.fields], obs), _saved_answer(rng, new)
    shown = _shown(rng, [tool], pool)
    return Episode("tool", shown, user, _announce(item), [step], answer, "image", [_media(item)])


def chain_episode(rng: random.Random, item: dict[str, Any], generator: str, split: str, pool: list[str]) -> Episode:
    """Two steps: the condition extractor, then the conditional generator on its output image."""
    first = PREREQUISITE[generator]
    thing = rng.choice(_THINGS)
    user = _fill(rng.choice(conditional_templates(split)), file=item["name"], text=thing, cond=CONDITION_NOUN[first])
    mid, obs1 = _image_result(rng)
    new, obs2 = _image_result(rng)
    steps = [_step(first, [item["name"]], obs1), _step(generator, [mid, thing], obs2)]
    shown = _shown(rng, [first, generator], pool)
    return Episode("chain", shown, user, _announce(item), steps, _saved_answer(rng, new), "image", [_media(item)])


def transcript(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 7))]
    return " ".join(words).capitalize() + "."


def audio_episode(rng: random.Random, item: dict[str, Any], split: str, pool: list[str], ambiguous: bool) -> Episode:
    """Speech → transcription (optionally a language argument); ``ambiguous`` wording needs the modality."""
    said = transcript(rng)
    if ambiguous:
        user = _fill(rng.choice(modality_templates("what", split)), file=item["name"])
    else:
        user = _fill(rng.choice(templates(TRANSCRIBE, split)), file=item["name"])
    values = [item["name"]] + (["en"] if not ambiguous and rng.random() < 0.25 else [])
    if len(values) == 2:
        user += " The speech is in English."
    step = _step(TRANSCRIBE, values, said)
    answer = rng.choice([f'The speaker says: "{said}"', f"The recording says: {said}"])
    extra = [VIDEO_DETECT, CAPTION] if ambiguous else []
    shown = _shown(rng, [TRANSCRIBE], pool, extra)
    return Episode("modality" if ambiguous else "tool", shown, user, _announce(item), [step], answer, "audio",
                   [_media(item)])


def video_episode(rng: random.Random, item: dict[str, Any], split: str, pool: list[str], mode: str) -> Episode:
    """A clip → video detection. ``mode``: plain, ``what`` or ``find`` (ambiguous: modality decides)."""
    scene = item["scene"]
    label = f"{scene['color']} {scene['shape']}"
    if mode == "find":
        user = _fill(rng.choice(modality_templates("find", split)), file=item["name"], obj=label)
        values = [item["name"], label]
    elif mode == "what":
        user = _fill(rng.choice(modality_templates("what", split)), file=item["name"])
        values = [item["name"]]
    else:
        template = rng.choice(templates(VIDEO_DETECT, split))
        user = _fill(template, file=item["name"], obj=label)
        values = [item["name"], label] if "{obj}" in template else [item["name"]]
    score = rng.uniform(0.5, 0.95)
    obs = f"{label}: seen in 8 frames from 0.0 s to 0.9 s, max score {score:.2f}"
    step = _step(VIDEO_DETECT, values, obs)
    answer = f"The video shows a {label} (from 0.0 s to 0.9 s)."
    extra = {"find": [DETECT], "what": [TRANSCRIBE, CAPTION]}.get(mode, [])
    shown = _shown(rng, [VIDEO_DETECT], pool, extra)
    return Episode("tool" if mode == "plain" else "modality", shown, user, _announce(item), [step], answer, "video",
                   [_media(item)])


def image_modality_episode(rng: random.Random, item: dict[str, Any], split: str, pool: list[str], mode: str) -> Episode:
    """The ambiguous wordings on an image: ``what`` → caption, ``find`` → object detection."""
    scene = item["scene"]
    obj = rng.choice(scene["objects"])
    phrase = T.object_phrase(obj)
    if mode == "what":
        user = _fill(rng.choice(modality_templates("what", split)), file=item["name"])
        obs = T.caption(scene)
        step, answer, extra = _step(CAPTION, [item["name"]], obs), obs, [TRANSCRIBE, VIDEO_DETECT]
    else:
        user = _fill(rng.choice(modality_templates("find", split)), file=item["name"], obj=phrase)
        out, _ = _image_result(rng)
        boxes = _detections(scene, rng, phrase)
        step = _step(DETECT, [item["name"], phrase], f"Result saved as {out}. Detected: {boxes}")
        answer, extra = f"I found the {phrase}: {boxes}. Result saved as {out}", [VIDEO_DETECT]
    tool = MODALITY_TOOL["image"] if mode == "what" else MODALITY_FIND_TOOL["image"]
    shown = _shown(rng, [tool], pool, extra)
    return Episode("modality", shown, user, _announce(item), [step], answer, "image", [_media(item)])


def speech_to_image_episode(rng: random.Random, item: dict[str, Any], pool: list[str]) -> Episode:
    """Two steps across modalities: transcribe a spoken request, then draw what it asks for."""
    thing = rng.choice(_THINGS)
    user = f"Draw what the speaker asks for in {item['name']}."
    new, obs = _image_result(rng)
    steps = [_step(TRANSCRIBE, [item["name"]], f"Please draw {thing}."),
             _step("Generate Image From User Input Text", [thing], obs)]
    shown = _shown(rng, [TRANSCRIBE, "Generate Image From User Input Text"], pool)
    return Episode("chain", shown, user, _announce(item), steps, _saved_answer(rng, new), "audio", [_media(item)])


def no_tool_episode(rng: random.Random, pool: list[str], item: dict[str, Any] | None) -> Episode:
    """A request that needs no tool (with random tools shown and, sometimes, an attachment announced)."""
    question, answer = T.general_qa(rng)
    shown = _shown(rng, [], pool)
    history = _announce(item) if item is not None else ""
    return Episode("no_tool", shown, question, history, [], answer, item["modality"] if item else "text",
                   [_media(item)] if item else [])


def _media(item: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"modality": item["modality"], "path": item["name"]}
    if not item.get("rendered", True):
        entry["rendered"] = False  # a train name without a file (SyntheticConfig.names_train)
    return entry


def step_text(step: Step) -> str:
    return P.render_step_text(step.tool, step.action_input)


def episode_samples(ep: Episode) -> list[dict[str, Any]]:
    """One ``{instruction, input, output, ...}`` sample per assistant turn of the episode."""
    specs = [P.tool_spec(t.openai()) for t in ep.shown]
    out = []
    for k in range(len(ep.steps) + 1):
        scratch = P.render_scratchpad([P.ScratchStep(step_text(s), s.observation) for s in ep.steps[:k]])
        instruction = P.render_prompt(specs, ep.user, chat_history=ep.history, scratchpad=scratch)
        if k < len(ep.steps):
            s = ep.steps[k]
            output = f"{step_text(s)}\nObservation:"
            tool = next(t for t in ep.shown if t.name == s.tool)
            target = {"tool": s.tool, "args": s.args, "parameters": tool.openai()["function"]["parameters"]}
        else:
            output = f"{P.THOUGHT_NO}\nAI: {ep.answer}"
            target = {"tool": None, "answer": ep.answer}
        out.append({"instruction": instruction, "input": "", "output": output, "kind": ep.kind,
                    "modality": ep.modality, "step": k, "target": target, "media": ep.media})
    return out
