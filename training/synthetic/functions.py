"""Generic function calling: randomly named functions with random argument schemas.

A model that only ever sees the GPT4Tools names memorises them; here every episode offers 2–5 freshly
invented functions (``verb_noun`` names over made-up nouns, 1–3 typed parameters), and the request
names the wanted function's purpose and argument values. The right call can only be found by reading
the offered list. Made-up nouns come from syllables; the unseen-tools split draws its nouns from a
disjoint syllable set, so none of its function names can occur in training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ibllm_agent.training.synthetic.tooluse import Episode, Step

_VERBS = ["get", "compute", "find", "lookup", "count", "convert", "check", "fetch", "measure", "list"]
_SYLLABLES = {"train": ["bo", "ka", "ri", "mu", "te", "zo", "lan", "pex", "dar", "vi", "gu", "sol"],
              "heldout": ["qua", "fy", "nox", "jel", "wum", "yir", "hob", "cre"]}
_PARAMS = {
    "string": ["city", "name", "color", "word", "label", "country", "topic", "unit"],
    "integer": ["count", "year", "size", "limit", "index", "day"],
    "number": ["amount", "weight", "rate", "height", "price"],
    "boolean": ["verbose", "exact", "strict"],
}
_STRINGS = ["paris", "blue", "apple", "meters", "alpha", "tokyo", "green", "kilograms", "music", "river"]
# (train templates, held-out templates); {purpose} = "the noun", {args} = "p1 v1 and p2 v2". Each held-out
# sentence reuses a train phrase ("What is the {noun}", "Call the right tool") in a new sentence. Most
# train wordings name the noun only: the verb must then be read off the offered line with that noun, a
# lookup a small model learns late (the demo model read it right for ~0.4 of noun-only requests with 2
# of 6 such wordings, ~0.5 with 5 of 9).
_REQUESTS = (
    ["Please {verb} the {noun} for {args}.", "Use {name} with {args}.", "I need the {noun}: {args}.",
     "Can you {verb} the {noun} given {args}?", "What is the {noun} for {args}?",
     "Call the right tool: {verb} the {noun} for {args}.", "Tell me the {noun} for {args}.",
     "Give me the {noun} with {args}.", "The {noun} for {args}, please."],
    ["What is the {noun} when {args}? Use a tool.", "Call the right tool to {verb} the {noun} with {args}."],
)


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    params: tuple[tuple[str, str], ...]  # (name, JSON type), in declared order
    verb: str
    noun: str

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": {p: {"type": t} for p, t in self.params},
                "required": [p for p, _ in self.params]}

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.schema()}}


def random_function(rng: random.Random, vocab: str) -> FunctionTool:
    syl = _SYLLABLES[vocab]
    noun = "".join(rng.choice(syl) for _ in range(rng.randint(2, 3)))
    verb = rng.choice(_VERBS)
    kinds = rng.sample(list(_PARAMS), rng.randint(1, 3))
    params = tuple((rng.choice(_PARAMS[k]), k) for k in kinds)
    names = ", ".join(p for p, _ in params)
    desc = rng.choice([f"{verb.capitalize()} the {noun} for the given {names}.",
                       f"Returns the {noun} ({verb}) from {names}."])
    return FunctionTool(f"{verb}_{noun}", desc, params, verb, noun)


def _value(rng: random.Random, kind: str) -> tuple[Any, str]:
    """A value and how it is written in the Action Input (what ``map_arguments`` reads back)."""
    if kind == "integer":
        v = rng.randint(0, 500)
        return v, str(v)
    if kind == "number":
        v = round(rng.uniform(0, 100), 1)
        return v, repr(v)
    if kind == "boolean":
        v = rng.random() < 0.5
        return v, json.dumps(v)
    v = rng.choice(_STRINGS)
    return v, v


def function_episode(rng: random.Random, vocab: str, split: str) -> Episode:
    """One request for one of 2–5 random functions; ``split`` picks train or held-out wordings."""
    tools: list[FunctionTool] = []
    n = rng.randint(2, 5)
    while len(tools) < n:
        f = random_function(rng, vocab)
        if all(f.name != t.name for t in tools):
            tools.append(f)
    want = rng.choice(tools)
    values = [_value(rng, k) for _, k in want.params]
    args_text = " and ".join(f"{p} {shown}" for (p, _), (_, shown) in zip(want.params, values))
    templates = _REQUESTS[0] if split == "train" else _REQUESTS[1]
    user = rng.choice(templates).format(verb=want.verb, noun=want.noun, args=args_text, name=want.name)
    result = f"{want.noun} = {rng.randint(1, 999)}"
    step = Step(want.name, ", ".join(s for _, s in values), {p: v for (p, _), (v, _) in zip(want.params, values)},
                result)
    answer = rng.choice([f"The result is {result}.", f"{want.name} returned {result}."])
    return Episode("function", list(tools), user, "", [step], answer, "text")
