"""``Transcribe Speech From Audio``: speech recognition with OpenAI Whisper (openai-whisper, the
``tools`` extra) from the weights dir.

The tool's name and description are the ones the synthetic tool-use data teaches
(``training/synthetic/tool_table.py`` reads them from here). Without the Whisper checkpoint the tool
raises ``MissingWeightError`` naming the file and the ``ibllm-agent download`` command; inside the
agent that becomes the observation the model reads.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ToolInputError

TRANSCRIBE = "Transcribe Speech From Audio"
TRANSCRIBE_DESCRIPTION = (
    "useful when you want to know what is said in an audio clip or a recording, like: transcribe "
    "this recording, or what does the speaker say. The input to this tool should be a comma separated "
    "string of one or two, representing the audio_path and optionally the language"
)
DEFAULT_WEIGHTS = "whisper_base"


@lru_cache(maxsize=2)
def _load(path: str, device: str) -> Any:
    try:
        import whisper
    except ImportError:
        raise ToolInputError(
            "speech transcription needs the openai-whisper package: pip install 'ibllm-agent[tools]'"
        ) from None
    return whisper.load_model(path, device=device)


def transcribe(audio_path: str, language: str | None = None, *, weights: str = DEFAULT_WEIGHTS,
               settings: Any = None, device: str = "cpu") -> str:
    """The text spoken in ``audio_path`` (a file already resolved inside the workspace)."""
    from ibllm_agent.weights import require

    checkpoint = require(weights, settings)  # MissingWeightError: file + download command
    p = Path(audio_path)
    if not p.is_file():
        raise ToolInputError(f"no audio file {p.name} in this conversation")
    model = _load(str(checkpoint), device)
    result = model.transcribe(str(p), language=(language or "").strip() or None, fp16=False)
    text = str(result.get("text", "")).strip()
    return text or f"no speech found in {p.name}"


def transcribe_tool(*, weights: str = DEFAULT_WEIGHTS, settings: Any = None, device: str = "cpu") -> Any:
    """The LangChain tool (``audio_path`` is resolved in the thread workspace by the agent)."""
    from langchain_core.tools import StructuredTool
    from pydantic import Field, create_model

    schema = create_model(
        "TranscribeSpeechInput",
        audio_path=(str, Field(description="the audio file")),
        language=(str | None, Field(default=None, description="optional language code, e.g. en")),
    )

    def run(audio_path: str, language: str | None = None) -> str:
        return transcribe(audio_path, language, weights=weights, settings=settings, device=device)

    return StructuredTool.from_function(run, name=TRANSCRIBE, description=TRANSCRIBE_DESCRIPTION,
                                        args_schema=schema)


__all__ = ["TRANSCRIBE", "TRANSCRIBE_DESCRIPTION", "transcribe", "transcribe_tool"]
