"""``load_chat_model``: the LangChain chat model behind an agent, from what a user passes as ``model``.

A ready-made chat model passes through; a ``TextGenerator`` (or a bare ``ImageBindLLM``) is wrapped in
``ChatImageBindLLM``; a preset name, ``scripted:PATH.json`` or a saved model folder is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

__all__ = ["load_chat_model"]


def load_chat_model(
    model: Any, cache_dir: str | Path | None = None, *, device: str | None = None, dtype: str | None = None,
    **chat_options: Any,
) -> Any:
    """A LangChain chat model from what a user passes to ``build_agent`` / ``--model``.

    - a ``BaseChatModel`` → unchanged; a ``TextGenerator`` (e.g. the ``MultimodalLLM`` of
      ``ibllm_agent.load_model``, ``ScriptedGenerator``) → wrapped in ``ChatImageBindLLM``; a bare
      ``ImageBindLLM`` gets the media stage its config names first (``MultimodalLLM.from_llm``);
    - a name of ``ibllm_agent.load_model`` (``"tiny"``: the random tiny preset for tests and smoke
      runs; ``"demo"``: the demo model shipped in the package; ``"official"``: the converted official model in
      ``<weights_dir>/official``; ``"auto"``: official when converted, else demo);
    - ``"scripted:PATH.json"`` → a ``ScriptedGenerator`` replaying a JSON list of outputs (a testing
      aid: drive the CLI without weights);
    - any other string → a saved model folder (``ChatImageBindLLM(model_dir=...)``).

    Names and folders load through ``ibllm_agent.loading`` (shared between chat models with the same
    settings); ``device`` / ``dtype`` follow the Settings rules there (None: ``IBLLM_DEVICE`` /
    ``IBLLM_DTYPE``, the config file, ``auto``). ``cache_dir``: a ``VisualCache`` folder for the media
    stage (media encodings then become cache-enhanced); an error for a ready-made chat model.

    ``chat_options``: ``ChatImageBindLLM`` fields for a model built here (``max_new_tokens``,
    ``temperature``, ``top_p``, ``seed``, …); an error for a ready-made chat model.

    Chat models built here keep ``invalid_retries=0``: ``build_agent`` answers invalid steps (unknown
    tool, malformed ``Action``) itself with an error observation and retries them
    (``build_agent(invalid_retries=2)``), so the attempts stay visible in the thread.
    """
    from langchain_core.language_models import BaseChatModel

    cache = None if cache_dir is None else str(Path(cache_dir).expanduser())
    if isinstance(model, BaseChatModel):
        if chat_options:
            raise ConfigError(
                f"chat options {sorted(chat_options)} apply to models built from a preset, folder or "
                "TextGenerator; set them on a ready-made chat model itself"
            )
        if cache is not None:
            raise ConfigError(
                "cache_dir applies to models built from a preset, folder or TextGenerator; give a ready-made "
                "chat model its cache itself (ChatImageBindLLM(cache_dir=...))"
            )
        return model
    from ibllm_agent.chat import ChatImageBindLLM
    from ibllm_agent.loading import available_models
    from ibllm_agent.model.llm import ImageBindLLM
    from ibllm_agent.testing import SCRIPTED_PREFIX, load_scripted
    from ibllm_agent.types import TextGenerator

    if isinstance(model, ImageBindLLM):
        from ibllm_agent.multimodal import MultimodalLLM

        model = MultimodalLLM.from_llm(model)
    if isinstance(model, TextGenerator):
        return ChatImageBindLLM(model=model, cache_dir=cache, **chat_options)
    if not isinstance(model, (str, Path)):
        raise ConfigError(
            f"model must be a chat model, a TextGenerator, a model name {available_models()}, 'scripted:PATH' or "
            f"a model folder; got {type(model).__name__}"
        )
    spec = str(model)
    placement = {"device": device, "dtype": dtype}
    if spec == "tiny":
        # A context that holds the GPT4Tools prompt (~700 tokens) and short answers: the random tiny
        # model only exercises the plumbing, so long generations would just cost time.
        return ChatImageBindLLM(**{"preset": "tiny", "max_new_tokens": 64, "cache_dir": cache, **placement,
                                   **chat_options})
    if isinstance(model, str) and spec in available_models():
        return ChatImageBindLLM(preset=spec, cache_dir=cache, **placement, **chat_options)
    if spec.startswith(SCRIPTED_PREFIX):
        return ChatImageBindLLM(model=load_scripted(spec), cache_dir=cache, **chat_options)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model {spec!r} is not a model name {available_models()}, 'scripted:PATH' or an existing model folder"
        )
    return ChatImageBindLLM(model_dir=str(path), cache_dir=cache, **placement, **chat_options)
