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


class TokenizerError(IbllmError, ValueError):
    """A tokenizer file is unreadable or not a tokenizer, or a tokenizer does not fit the model."""


class TokenizerNotFoundError(IbllmError, FileNotFoundError):
    """The tokenizer file (e.g. LLaMA's ``tokenizer.model``) does not exist."""


class PromptError(IbllmError, ValueError):
    """A prompt cannot be decoded from: empty, or holding token ids outside the vocabulary."""


class WorkspaceError(IbllmError, ValueError):
    """A file name given to the agent's workspace is unsafe or unusable (absolute, ``..``, a symlink
    out of the workspace, an attachment that cannot be stored)."""


class WorkspaceFileNotFoundError(WorkspaceError, FileNotFoundError):
    """A tool asked for a workspace file that does not exist; the message lists the known files."""


class MemoryURLError(IbllmError, ValueError):
    """An agent memory URL (``sqlite:///…``, ``postgres://…``, ``memory``) is malformed or unusable."""


class ThreadBusyError(IbllmError):
    """A turn was sent to a conversation thread that is still running another turn (in this or
    another process sharing the memory database) and the wait for it ran out."""


class ToolRegistryError(IbllmError, ValueError):
    """A tool cannot be registered or found (duplicate or unknown name, bad entry point)."""


class ModelBudgetError(IbllmError, MemoryError):
    """A heavy tool model does not fit in the model pool's memory budget even after unloading."""


class DownloadError(IbllmError):
    """A download failed: HTTP error (404 ...), network failure or an interrupted transfer.

    ``partial`` is the ``*.part`` file kept for resuming, or ``None`` when nothing was kept.
    """

    def __init__(self, message: str, *, url: str | None = None, partial: str | None = None):
        self.url = url
        self.partial = partial
        super().__init__(message)


class ChecksumError(DownloadError):
    """A downloaded file's sha256 or size differs from the published one (the bad file is removed)."""


class UnknownWeightError(IbllmError, ValueError):
    """A weight name is not in the registry (the message lists the known names)."""


class CacheError(IbllmError):
    """A visual cache cannot be built, loaded or queried (names the cache or input and the reason)."""


class CacheDimensionError(CacheError, ValueError):
    """Features or queries whose width differs from the cache's feature dimension."""


class EmptyCacheError(CacheError, ValueError):
    """A cache with no features (nothing to index or search)."""


class CorruptCacheError(CacheError):
    """A cache directory or faiss index file that cannot be read back (truncated, wrong format)."""


class CacheSourceError(CacheError, FileNotFoundError):
    """A build source that does not exist or is not a supported kind of file."""


class ContentBlockError(IbllmError, ValueError):
    """A chat message content block cannot become a ``Media`` item (unknown type or modality, bad
    base64, unresolvable ``file_id``, missing local file); the message names the block and the reason."""


class FetchError(ContentBlockError):
    """A remote ``http(s)`` attachment could not be fetched: HTTP error, timeout or over the size limit."""


class ToolArgumentError(IbllmError, ValueError):
    """A GPT4Tools ``Action Input`` string does not fit the tool's argument schema (too few values,
    a value of the wrong type); the chat model turns it into an ``invalid_tool_call``."""


class ManualWeightMissingError(MissingWeightError):
    """A missing checkpoint that cannot be downloaded automatically (gated release); the message
    says where to get it and where to put it."""

    def __init__(self, name: str, path: str, how_to_get: str):
        self.name = name
        self.path = path
        IbllmError.__init__(
            self,
            f"missing weight {name!r}: expected file {path}. It cannot be downloaded automatically: {how_to_get}",
        )


class EncoderInputError(IbllmError, ValueError):
    """A tensor handed to the ImageBind encoders has the wrong modality name, shape, dtype or values
    (the message names the modality, the expected shape and what was given)."""


class UnknownLanguageError(IbllmError, ValueError):
    """A speech-recognition language that Whisper does not know (the message lists the codes)."""


class ToolInputError(IbllmError, ValueError):
    """A tool's input is unusable: empty object text, a file that is not an image, an image over the
    size limit, an unknown media file. The agent turns it into an error observation the model reads."""


class EvalDataError(IbllmError, ValueError):
    """An evaluation file (ground truth, predictions, MME questions) is missing, not JSON, or lacks a
    field; the message names the file, the item and the field."""
