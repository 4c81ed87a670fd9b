"""The one exception tree of ibllm-agent.

Every error a user can provoke with bad input or a missing file is an ``IbllmError`` subclass with a
message that names the input and the reason, so callers can catch the family and CLIs can print it
without a traceback.
"""

from __future__ import annotations


class IbllmError(Exception):
    """Base class of every error raised on purpose by ibllm-agent."""


class MissingWeightError(IbllmError, FileNotFoundError):
    """A code path needs a checkpoint file that is not in the weights directory."""

    def __init__(self, name: str, path: str, hint: str | None = None):
        self.name = name
        self.path = path
        msg = f"missing weight {name!r}: expected file {path}. Fetch it with `ibllm-agent download {name}`"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg + ".")


class CheckpointError(IbllmError):
    """A checkpoint does not fit the model (names the first mismatching keys)."""


class ContextLengthError(IbllmError, ValueError):
    """A prompt is longer than the model's context window."""


class ConfigError(IbllmError, ValueError):
    """Settings or a model config are invalid."""
