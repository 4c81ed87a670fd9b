"""The tools the synthetic tool-use data talks about, with instruction templates per tool.

GPT4Tools tools come from ``ibllm_agent.tools.catalog`` (exact names, runtime descriptions, input
fields); so do the audio/video expert tools (``Transcribe Speech From Audio``, ``Detect Objects In
Video``, ``catalog.PROJECT_DESCRIPTIONS``), whose second field (language / vocabulary) is optional.

Templates use ``{file}`` (the attachment's name), ``{obj}`` (an object in the scene), ``{text}`` (a thing
to draw), ``{style}``, ``{question}``, ``{new}`` (a replacement object). Each tool's templates are split:
the first ones train, the rest (``HELDOUT_PER_TOOL``) are held out for the validation split.

A held-out template is a held-out *sentence*, as GPT4Tools' validation instructions are new instructions
from the training distribution: its key phrase ("get rid of the {obj}", "the hed boundary of") also
occurs in one train template, aimed at another target (``{file}`` there, "this image" in validation, or
the other way round). A model trained from scratch knows no synonyms, so a phrase it never saw could
only be guessed; what the split measures is reading the request against the offered tools, finding the
file in the request or the announced attachment, and copying it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ibllm_agent.tools.catalog import INPUT_FIELDS, PROJECT_DESCRIPTIONS, RUNTIME_DESCRIPTIONS

TRANSCRIBE = "Transcribe Speech From Audio"
VIDEO_DETECT = "Detect Objects In Video"
DETECT = "Detect the Give Object"
CAPTION = "Get Photo Description"

# The registered descriptions and fields (tools/catalog.py), so the data teaches what the agent shows.
EXPERT_DESCRIPTIONS = {name: PROJECT_DESCRIPTIONS[name] for name in (TRANSCRIBE, VIDEO_DETECT)}
EXPERT_FIELDS = {name: INPUT_FIELDS[name] for name in (TRANSCRIBE, VIDEO_DETECT)}
EXPERT_REQUIRED = {TRANSCRIBE: 1, VIDEO_DETECT: 1}

# Conditional generators and the extractor that must run first (GPT4Tools' prerequisite pairs).
PREREQUISITE = {
    "Generate Image Condition On Canny Image": "Edge Detection On Image",
    "Generate Image Condition On Line Image": "Line Detection On Image",
    "Generate Image Condition On Soft Hed Boundary Image": "Hed Detection On Image",
    "Generate Image Condition On Sketch Image": "Sketch Detection On Image",
    "Generate Image Condition On Pose Image": "Pose Detection On Image",
    "Generate Image Condition On Segmentations": "Segment the Image",
    "Generate Image Condition On Depth": "Predict Depth On Image",
    "Generate Image Condition On Normal Map": "Predict Normal Map On Image",
}
# What each extractor produces, in words (for chain instructions).
CONDITION_NOUN = {
    "Edge Detection On Image": "edges", "Line Detection On Image": "straight lines",
    "Hed Detection On Image": "soft hed boundary", "Sketch Detection On Image": "sketch",
    "Pose Detection On Image": "human pose", "Segment the Image": "segmentation",
    "Predict Depth On Image": "depth map", "Predict Normal Map On Image": "normal map",
}
# Tools held out of training by default: the unseen-tools split asks for them.
DEFAULT_HELDOUT_TOOLS = (
    "Generate Image Condition On Line Image",
    "Predict Normal Map On Image",
    "Generate Image Condition On Normal Map",
)
HELDOUT_PER_TOOL = 1

_SINGLE: dict[str, list[str]] = {
    CAPTION: ["Describe {file}.", "What is inside {file}?", "Tell me what this picture shows.",
              "Give me a caption for this picture.", "Can you give me a caption for {file}?"],
    "Edge Detection On Image": ["Detect the edges of {file}.", "Perform canny edge detection on {file}.",
                                "Show me the edge map of this image.", "Find the edges in this image.",
                                "Find the edges in {file}."],
    "Line Detection On Image": ["Detect the straight lines in {file}.", "Find the lines of {file}.",
                                "Show the straight line image of this picture.", "Show the straight line image of {file}."],
    "Hed Detection On Image": ["Detect the soft hed boundary of {file}.", "Run hed boundary detection on {file}.",
                               "Give me the hed boundary of {file}.", "Give me the hed boundary of this image."],
    "Sketch Detection On Image": ["Generate a sketch of {file}.", "Make a scribble from {file}.",
                                  "Detect the sketch of {file}.", "Detect the sketch of this image."],
    "Pose Detection On Image": ["Detect the human pose in {file}.", "Generate the pose image of {file}.",
                                "Find the poses of the people in {file}.", "Find the poses of the people in this image."],
    "Segment the Image": ["Segment everything in {file}.", "Generate segmentations of {file}.",
                          "Perform segmentation on {file}.", "Perform segmentation on this image."],
    "Predict Depth On Image": ["Predict the depth of {file}.", "Estimate a depth map for {file}.",
                               "How far away are things in {file}? Give me the depth map.",
                               "How far away are things in this image? Give me the depth map."],
    "Predict Normal Map On Image": ["Predict the normal map of {file}.", "Generate a normal map from {file}.",
                                    "Show me the surface normals of {file}.", "Show me the surface normals of this image."],
    DETECT: ["Detect the {obj} in {file}.", "Find the {obj} in {file}.", "Where is the {obj} in this image?",
             "Locate the {obj} in this image.", "Locate the {obj} in {file}."],
    "Segment the given object": ["Segment the {obj} in {file}.", "Cut out the {obj} from {file}.",
                                 "Give me a mask of the {obj} in {file}.", "Give me a mask of the {obj} in this image."],
    "Remove Something From The Photo": ["Remove the {obj} from {file}.", "Erase the {obj} in {file}.",
                                        "Get rid of the {obj} in {file}.", "Get rid of the {obj} in this picture."],
    "Replace Something From The Photo": ["Replace the {obj} in {file} with a {new}.",
                                         "Swap the {obj} in {file} for a {new}.",
                                         "Change the {obj} in {file} into a {new}.",
                                         "Change the {obj} in this image into a {new}."],
    "Answer Question About The Image": ["{question_lc} Look at {file}.", "In {file}, {question_lc}",
                                        "Answer this about {file}: {question}", "Answer this about the image: {question}"],
    "Instruct Image Using Text": ["Make {file} look like {style}.", "Restyle {file} as {style}.",
                                  "Turn {file} into {style}.", "Turn this image into {style}."],
    "Generate Image From User Input Text": ["Generate an image of {text}.", "Draw {text}.",
                                            "Create a picture of {text}.", "Paint {text}.",
                                            "Please paint {text} for me."],
    TRANSCRIBE: ["Transcribe {file}.", "What does the speaker say in {file}?", "Write down what is said in this recording.",
                 "Give me the text of this recording.", "Give me the text of {file}."],
    # With ``{obj}``, the object is the call's second (optional) field: a request that names one asks for it.
    VIDEO_DETECT: ["Which objects appear in {file}?", "Detect the objects in {file}.", "What shows up in this video?",
                   "List the objects in this clip.", "Track the {obj} in {file}.", "Does a {obj} show up in {file}?",
                   "When does the {obj} appear in {file}?", "List the objects in the clip {file}."],
}
_CONDITIONAL = ["Generate a real image of {text} from the {cond} of {file}.",
                "Use the {cond} of {file} to make a new image of {text}.",
                "Create {text} that follows the {cond} of {file}.",
                "Create {text} that follows the {cond} of this image."]
# Ambiguous wordings: the attachment's modality decides the tool.
MODALITY_TEMPLATES = {
    "what": ["What is going on in {file}?", "Analyze {file} for me.", "What can you tell me about {file}?",
             "Tell me about the attachment {file}."],
    "find": ["Find the {obj} in {file}.", "Look for a {obj} in {file}.", "Search {file} for a {obj}.",
             "Can you spot a {obj} in {file}?", "Is there a {obj} in {file}?"],
}
MODALITY_TOOL = {"audio": TRANSCRIBE, "video": VIDEO_DETECT, "image": CAPTION}
MODALITY_FIND_TOOL = {"video": VIDEO_DETECT, "image": DETECT}


@dataclass(frozen=True)
class GenTool:
    """A tool as the generator uses it: name, description, argument fields (all strings) and how many
    of them are required."""

    name: str
    description: str
    fields: tuple[str, ...]
    required: int

    def schema(self) -> dict[str, Any]:
        """The JSON-schema ``parameters`` (what ``protocol.map_arguments`` maps the input onto)."""
        return {"type": "object", "properties": {f: {"type": "string"} for f in self.fields},
                "required": list(self.fields[: self.required])}

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.schema()}}


def gen_tool(name: str) -> GenTool:
    if name in EXPERT_DESCRIPTIONS:
        return GenTool(name, EXPERT_DESCRIPTIONS[name], EXPERT_FIELDS[name], EXPERT_REQUIRED[name])
    fields = INPUT_FIELDS[name]
    return GenTool(name, RUNTIME_DESCRIPTIONS[name], fields, len(fields))


def all_tool_names() -> list[str]:
    return list(RUNTIME_DESCRIPTIONS) + list(EXPERT_DESCRIPTIONS)


def templates(name: str, split: str) -> list[str]:
    """Instruction templates of a single-tool request for ``split`` ("train" or held-out "val")."""
    items = _SINGLE[name]
    return items[:-HELDOUT_PER_TOOL] if split == "train" else items[-HELDOUT_PER_TOOL:]


def conditional_templates(split: str) -> list[str]:
    return _CONDITIONAL[:-1] if split == "train" else _CONDITIONAL[-1:]


def modality_templates(kind: str, split: str) -> list[str]:
    items = MODALITY_TEMPLATES[kind]
    return items[:-1] if split == "train" else items[-1:]
