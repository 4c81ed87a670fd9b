"""Generic function calling in the shapes LangChain applications use, over invented functions.

``training.synthetic`` teaches picking one of several GPT4Tools-style functions from a request that
names its purpose. LangChain callers add other shapes, and a model that never saw them fails them:

- ``expr``: a call written in the request (``What does zorb_tal(12) give?``) → copy name and value;
- ``place``: one free-text parameter (``What is the pollen count in Lyon, FR?``) → the whole phrase
  (commas included: one parameter takes the whole Action Input);
- ``forced``: ``tool_choice`` prefills ``Action: `` / ``Action: NAME\\nAction Input: `` after a request
  that names no values (``Hi there!``) → a schema-valid value of the parameter's type;
- ``record``: structured output (a schema bound as the only, forced tool; 2–3 string fields) → one
  comma-free phrase per field, about the request's topic;
- ``unicode``: a name in non-Latin script inside quotes → copied byte for byte into the first field;
- after an ``Observation`` → a ``No`` thought and an answer that repeats it; after an error
  observation (a missing weight, a bad input) → an answer that says what went wrong (``error``);
- a follow-up about the previous turn (``memory``) → the earlier answer, from the chat history.

Every function, parameter and wording is made up here (syllable names, ``verb_noun``); none is a
name or prompt of LangChain's standard test suite. Each sample is ``{"id", "kind", "prompt",
"prefill", "output", "tools"}``: ``prompt`` the GPT4Tools training prompt (untemplated),
``prefill`` what the chat model forces at the start of the answer (``protocol.prefill_for``),
``output`` the model's continuation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ibllm_agent import protocol as P

_SYL = ["ta", "ko", "rin", "mel", "dov", "sa", "pu", "zen", "lor", "fi", "gan", "vek", "nu", "bri", "tho"]
_VERBS = ["apply", "get", "compute", "resolve", "score", "lookup", "turn", "shift", "rate", "weigh"]
_NUM_PARAMS = ["value", "amount", "n", "count", "number", "level", "step", "x"]
_STR_PARAMS = ["place", "city", "area", "region", "spot", "address", "site", "town"]
_PLACES = ["Lyon, FR", "Austin, TX", "Kyoto", "Porto, Portugal", "Denver, CO", "Oslo", "Cairo, Egypt",
           "Perth, WA", "Quebec City, QC", "Nairobi", "Seattle, WA", "Lima, Peru", "Bergen", "Tucson, AZ"]
_MEASURES = ["pollen count", "air quality", "tide level", "traffic", "noise level", "humidity", "time zone",
             "wind speed", "population", "elevation"]
_GREETINGS = ["Hello!", "Hi there!", "Hey.", "Good morning!", "Hi, how are you?", "Greetings.", "Yo!",
              "Hello, friend.", "Good evening.", "Hey there, what's up?"]
# Structured records: (class name, docstring, fields, request nouns)
_RECORDS = [
    ("Riddle", "Riddle for the user.", ["question", "answer"], "riddle"),
    ("Poem", "A short poem to share.", ["title", "first_line", "last_line"], "poem"),
    ("Story", "Story to tell the reader.", ["beginning", "ending"], "story"),
    ("Fact", "An interesting fact.", ["subject", "statement"], "fact"),
    ("Quote", "Quote for the user.", ["text", "author"], "quote"),
    ("Slogan", "Slogan to present.", ["headline", "tagline"], "slogan"),
    ("Recipe", "Recipe to cook.", ["dish", "main_step"], "recipe"),
    ("Pun", "Pun to amuse the user.", ["lead", "twist"], "pun"),
]
_TOPICS = ["dogs", "the moon", "coffee", "trains", "rain", "pirates", "robots", "apples", "the sea", "owls",
           "winter", "music", "bicycles", "clouds", "frogs", "books"]
_FILLERS = {
    0: ["Why do {t} never rest", "What did {t} say", "A tale of {t}", "Ode to {t}", "All about {t}",
        "Think of {t}", "Where {t} go"],
    1: ["Because {t} love the night", "They said hello", "And so {t} went home", "Only {t} know why",
        "The end came softly", "Nobody asked them twice", "It was all a dream"],
    2: ["Forever with {t}", "Then silence", "Goodbye for now"],
}
# Names in other scripts (copied byte for byte), with an English gloss.
_SCRIPTS = [
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经",
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん",
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン",
    "абвгдежзийклмнопрстуфхцчшщыэюя",
    "가나다라마바사아자차카타파하강남동서산",
    "αβγδεζηθικλμνξοπρστυφχψω",
    "éèêàçñüöäßøå",
]
_SCRIPT_CHARS = frozenset("".join(_SCRIPTS))
# CJK ideographs, hiragana, katakana, Hangul syllables: blocks whose random characters are byte pieces.
_BYTE_BLOCKS = [(0x4E00, 0x9FA5), (0x4E00, 0x9FA5), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xD7A3)]
_KINDS = ["bakery", "software firm", "design studio", "shipping company", "book shop", "travel agency",
          "tea house", "robotics lab"]
_ADJ = ["local", "small", "new", "family", "global", "young"]


@dataclass(frozen=True)
class Fn:
    name: str
    description: str
    params: tuple[tuple[str, str], ...]  # (name, JSON type)

    def spec(self) -> P.ToolSpec:
        props = {n: {"type": t} for n, t in self.params}
        return P.ToolSpec(self.name, self.description, {"type": "object", "properties": props,
                                                         "required": [n for n, _ in self.params]})


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3)))


def _num_fn(rng: random.Random) -> Fn:
    verb, noun = rng.choice(_VERBS), _word(rng)
    name = rng.choice([f"{noun}_{verb}", f"{verb}_{noun}", f"{noun}_function", f"{noun}{rng.randint(1, 9)}"])
    p = rng.choice(_NUM_PARAMS)
    desc = rng.choice([f"{verb.capitalize()} the {noun} to a {p}.", f"Apply {noun} to a number.",
                       f"Compute {noun} of the given {p}.", f"{verb.capitalize()} a {noun} transform."])
    return Fn(name, desc, ((p, "integer"),))


def _place_fn(rng: random.Random, measure: str) -> Fn:
    key = measure.replace(" ", "_")
    name = rng.choice([f"get_{key}", f"{key}_at", f"check_{key}", f"{key}_lookup"])
    p = rng.choice(_STR_PARAMS)
    desc = rng.choice([f"Get the {measure} at a {p}.", f"Look up the {measure} for a {p}.",
                       f"Return the current {measure} of a {p}."])
    return Fn(name, desc, ((p, "string"),))


def _distractors(rng: random.Random, exclude: set[str], k: int) -> list[Fn]:
    out: list[Fn] = []
    while len(out) < k:
        f = _num_fn(rng) if rng.random() < 0.5 else _place_fn(rng, rng.choice(_MEASURES))
        if f.name not in exclude | {o.name for o in out}:
            out.append(f)
    return out


def _sample(kind: str, tools: list[Fn], user: str, output: str, prefill: str = "",
            steps: list[P.ScratchStep] = ()) -> dict[str, Any]:
    specs = [t.spec() for t in tools]
    prompt = P.render_prompt(specs, user, scratchpad=P.render_scratchpad(list(steps)))
    return {"kind": kind, "prompt": prompt, "prefill": prefill, "output": output,
            "tools": [t.name for t in tools]}


def _step(tool: str, arg: str) -> str:
    return f"{P.THOUGHT_YES}\nAction: {tool}\nAction Input: {arg}"


def _with_answer(samples: list[dict[str, Any]], kind: str, tools: list[Fn], user: str, tool: str, arg: str,
                 result: str, answer: str) -> None:
    steps = [P.ScratchStep(_step(tool, arg), result)]
    samples.append(_sample(kind, tools, user, f"{P.THOUGHT_NO}\n{P.AI_PREFIX}: {answer}", steps=steps))


def _forcing(rng: random.Random, tools: list[Fn], want: Fn, body: str) -> tuple[str, str]:
    """A random tool_choice form (auto / any / the name) and what stays to generate after its prefill."""
    full = _step(want.name, body) + "\nObservation:"
    mode = rng.choice(["auto", "any", "name"])
    if mode == "auto":
        return "", full
    prefill = P.prefill_for("any" if mode == "any" else want.name, [t.spec() for t in tools])
    return prefill, full[len(prefill):]


def expr_samples(rng: random.Random) -> list[dict[str, Any]]:
    want = _num_fn(rng)
    tools = [want, *_distractors(rng, {want.name}, rng.randint(0, 3))]
    rng.shuffle(tools)
    v = rng.randint(-50, 999)
    user = rng.choice(["What does {f}({v}) give?", "Compute {f}({v}) with the tool.", "Please run {f}({v}).",
                       "What is {f}({v})? Use a tool.", "Tell me the result of {f}({v}).",
                       "I need {f}({v}), call the tool.", "Evaluate {f} for {v}."]).format(f=want.name, v=v)
    prefill, rest = _forcing(rng, tools, want, str(v))
    out = [_sample("expr", tools, user, rest, prefill)]
    r = rng.randint(-100, 2000)
    _with_answer(out, "expr", tools, user, want.name, str(v), str(r),
                 rng.choice([f"{want.name}({v}) is {r}.", f"The result is {r}.", f"It gives {r}."]))
    return out


def place_samples(rng: random.Random) -> list[dict[str, Any]]:
    measure = rng.choice(_MEASURES)
    want = _place_fn(rng, measure)
    tools = [want, *_distractors(rng, {want.name}, rng.randint(0, 3))]
    rng.shuffle(tools)
    place = rng.choice(_PLACES)
    user = rng.choice(["What is the {m} in {p}?", "How is the {m} in {p} today?", "Check the {m} for {p}.",
                       "Tell me the {m} at {p}.", "What's the {m} like in {p}?"]).format(m=measure, p=place)
    prefill, rest = _forcing(rng, tools, want, place)
    out = [_sample("place", tools, user, rest, prefill)]
    obs = rng.choice(["It is low.", "High today.", "Moderate.", "42 units.", "Calm and clear."])
    _with_answer(out, "place", tools, user, want.name, place, obs,
                 rng.choice([f"The {measure} in {place}: {obs}", f"In {place}, {obs.lower()}"]))
    return out


def forced_samples(rng: random.Random) -> list[dict[str, Any]]:
    """A greeting with tool_choice forced: any valid call (the first shown tool for ``any``)."""
    tools = _distractors(rng, set(), rng.randint(1, 3))
    user = rng.choice(_GREETINGS)
    out = []
    # Unforced, the same greeting is answered without a tool.
    out.append(_sample("forced", tools, user, f"{P.THOUGHT_NO}\n{P.AI_PREFIX}: " + rng.choice(
        ["Hello! How can I help you?", "Hi! What can I do for you?", "Hello there."])))
    want = rng.choice(tools) if rng.random() < 0.5 else tools[0]
    mode = "name" if want is not tools[0] or rng.random() < 0.5 else "any"
    specs = [t.spec() for t in tools]
    prefill = P.prefill_for(want.name if mode == "name" else "any", specs)
    (pname, ptype), = want.params
    body = str(rng.choice([0, 1, 2, 5, 10])) if ptype == "integer" else rng.choice(["here", "home", "anywhere"])
    full = _step(want.name, body) + "\nObservation:"
    out.append(_sample("forced", tools, user, full[len(prefill):], prefill))
    return out


def record_samples(rng: random.Random) -> list[dict[str, Any]]:
    cls, doc, fields, noun = rng.choice(_RECORDS)
    n = len(fields)
    fields = fields[:n]
    fn = Fn(cls, doc, tuple((f, "string") for f in fields))
    topic = rng.choice(_TOPICS)
    user = rng.choice(["Tell me a {n} about {t}.", "Write a {n} about {t}.", "Give me a {n} on {t}.",
                       "I want a {n} about {t}.", "Make up a {n} about {t}."]).format(n=noun, t=topic)
    pieces = [rng.choice(_FILLERS[min(i, 2)]).format(t=topic) for i in range(n)]
    prefill = P.prefill_for(cls, [fn.spec()])
    full = _step(cls, ", ".join(pieces)) + "\nObservation:"
    return [_sample("record", [fn], user, full[len(prefill):], prefill)]


def foreign_name(rng: random.Random) -> str:
    """A name in another script: letters of one ``_SCRIPTS`` alphabet (single pieces of the demo
    tokenizer), or, for half of them, random characters of a CJK / kana / Hangul block, which the
    tokenizer never sees (``byte_level``) and so spells in UTF-8 byte pieces: copying those is copying
    2–6 runs of three byte tokens each, as any name outside the tokenizer's alphabet must be."""
    if rng.random() < 0.5:
        script = rng.choice(_SCRIPTS)
        return "".join(rng.choice(script) for _ in range(rng.randint(2, 6)))
    lo, hi = rng.choice(_BYTE_BLOCKS)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(2, 6)))


def byte_level(text: str) -> bool:
    """Whether ``text`` holds a character of ``_BYTE_BLOCKS`` outside the ``_SCRIPTS`` alphabets (the
    demo tokenizer is trained without such texts, so these characters stay byte pieces)."""
    return any(ord(c) >= 0x3000 and c not in _SCRIPT_CHARS for c in text)


def unicode_samples(rng: random.Random) -> list[dict[str, Any]]:
    name = foreign_name(rng)
    noun = rng.choice(["client", "member", "supplier", "partner", "vendor", "guest", "patron", "tenant", "buyer"])
    verb = rng.choice(["add", "register", "create", "new", "make", "enroll", "save"])
    key = rng.choice([f"{noun}_name", f"{noun}_name", "name", "full_name", "title", "label"])
    other = rng.choice(["details", "description", "notes", "about", "info"])
    desc = rng.choice([f"Tool for adding a {noun} with a name in any language.", f"Creates a new {noun} record.",
                       f"Registers a {noun} by name.", f"Stores a {noun} and a short note about it.",
                       f"Adds a {noun} to the books.", f"Tool that makes a {noun} entry from a name."])
    fn = Fn(f"{verb}_{noun}", desc, ((key, "string"), (other, "string")))
    kind = f"{rng.choice(_ADJ)} {rng.choice(_KINDS)}"
    q = rng.choice(["'{}'", "'{}'", '"{}"', "«{}»", "{}"]).format(name)
    gloss = rng.choice(["", "", f" ({_word(rng).capitalize()} {rng.choice(['Group', 'Co', 'Ltd', 'House'])})"])
    user = rng.choice(["Add a {n} named {q}{g} - a {k}", "Register the {n} {q}{g}, a {k}.",
                       "Create a {n} called {q}{g} (a {k})", "Please make a new {n} named {q}{g} - a {k}",
                       "Create a {n} named {q}{g} - a {k}", "Set up the {n} {q}{g}: a {k}.",
                       "New {n} {q}{g}, which is a {k}."]).format(n=noun, q=q, g=gloss, k=kind)
    tools = [fn, *_distractors(rng, {fn.name}, rng.randint(0, 2))]
    prefill, rest = _forcing(rng, tools, fn, f"{name}, a {kind}")
    return [_sample("unicode", tools, user, rest, prefill)]


_WEIGHTS = ["sd_text2image", "whisper_base", "sam_vit_h", "groundingdino_swint_ogc", "instruct_pix2pix",
            "sd_inpainting", "kilo_model", "tarn_net"]


def error_samples(rng: random.Random) -> list[dict[str, Any]]:
    """The called tool fails; the answer passes its error on (the words after ``Error: Type:``)."""
    want = _place_fn(rng, rng.choice(_MEASURES)) if rng.random() < 0.5 else _num_fn(rng)
    tools = [want, *_distractors(rng, {want.name}, rng.randint(0, 3))]
    rng.shuffle(tools)
    (_, ptype), = want.params
    arg = str(rng.randint(0, 99)) if ptype == "integer" else rng.choice(_PLACES)
    user = (f"Run {want.name} on {arg}." if ptype == "integer" else
            f"What is the {want.description.split(' the ')[1].split(' at')[0].split(' for')[0].split(' of')[0]} in {arg}?")
    w = rng.choice(_WEIGHTS)
    msg = rng.choice([
        f"missing weight '{w}': expected file {w.split('_')[0]}/{w}.pt. Fetch it with `ibllm-agent download {w}`.",
        f"{arg} is not a value this tool can read",
        f"the tool needs the package {rng.choice(['cv2', 'whisper', 'diffusers'])}: pip install 'ibllm-agent[tools]'",
    ])
    kind = "MissingWeightError" if msg.startswith("missing weight") else "ToolInputError"
    out = [_sample("error", tools, user, _step(want.name, arg) + "\nObservation:")]
    _with_answer(out, "error", tools, user, want.name, arg, f"Error: {kind}: {msg}",
                 f"I could not run {want.name}: {msg}")
    return out


_FOLLOW_UPS = ["What was your last answer?", "Can you repeat that?", "Remind me what you found.",
               "Say that again, please.", "What did you tell me before?"]


def memory_samples(rng: random.Random) -> list[dict[str, Any]]:
    """A follow-up about the previous exchange, answered from the chat history without a tool."""
    tools = _distractors(rng, set(), rng.randint(1, 3))
    name = "image/" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) + ".png"
    measure, place = rng.choice(_MEASURES), rng.choice(_PLACES)
    earlier = rng.choice([
        (f"Detect the edges of {name}.", f"Result saved as {name[:-4]}_edge.png"),
        (f"What is the {measure} in {place}?", f"The {measure} in {place}: {rng.choice(['low', 'high', 'calm'])}."),
        (f"Compute {_word(rng)}({rng.randint(0, 99)}).", f"The result is {rng.randint(0, 999)}."),
    ])
    past = [P.Exchange(*earlier)]
    if rng.random() < 0.6:  # attachments announced first, as the agent does
        for modality, ext in rng.sample([("image", ".png"), ("audio", ".wav"), ("video", ".mp4")], rng.randint(1, 2)):
            stem = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
            past.insert(0, P.Exchange(*P.render_announcement(f"{modality}/{stem}{ext}", modality, "A file.")))
    history = P.render_history(past, "full")
    specs = [t.spec() for t in tools]
    prompt = P.render_prompt(specs, rng.choice(_FOLLOW_UPS), chat_history=history)
    return [{"kind": "memory", "prompt": prompt, "prefill": "", "tools": [t.name for t in tools],
             "output": f"{P.THOUGHT_NO}\n{P.AI_PREFIX}: {earlier[1]}"}]


GENERATORS = {"expr": expr_samples, "place": place_samples, "forced": forced_samples,
              "record": record_samples, "unicode": unicode_samples, "error": error_samples,
              "memory": memory_samples}


def generate_calls(n_episodes: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n_episodes`` episodes spread evenly over the shapes (1–2 samples each), deterministic."""
    rng = random.Random(f"calls-{seed}")
    names = list(GENERATORS)
    out: list[dict[str, Any]] = []
    for i in range(n_episodes):
        for s in GENERATORS[names[i % len(names)]](rng):
            out.append({"id": f"call-{i:05d}-{len(out)}", **s})
    return out


__all__ = ["GENERATORS", "byte_level", "foreign_name", "generate_calls"]
