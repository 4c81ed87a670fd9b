"""The LangChain chat model: ``from ibllm_agent.chat import ChatImageBindLLM``.

Modules, one concern each: ``model`` (the ``ChatImageBindLLM`` class; its docstring is the manual),
``rendering`` (messages → prompt), ``attempts`` (model calls, invalid-step retries), ``messages``
(parsed step → ``AIMessage`` fields and stream chunks), ``step_stream`` (incremental parsing of
streamed text), ``findings`` (expert memoisation) and ``loading`` (models from ``preset``/``model_dir``).
"""

from ibllm_agent.chat.model import ChatImageBindLLM

__all__ = ["ChatImageBindLLM"]
