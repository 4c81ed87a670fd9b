"""Tool registry: GPT4Tools-named tools, user ``@tool`` functions and entry-point plug-ins.

Three ways a tool reaches the agent:

1. **GPT4Tools tools** (``gpt4tools_tool``): exact catalog name (typos included) and description,
   argument fields from ``ibllm_agent.tools.catalog.INPUT_FIELDS`` so the chat model can split the
   model's comma-separated ``Action Input`` the GPT4Tools way. A heavy model is taken from the
   ``ModelPool`` on each call (loaded lazily, unloaded LRU under the budget).
2. **Your own tools**: any LangChain tool (``@tool`` from ``langchain_core.tools``) or a plain
   function with a docstring, via ``registry.register(fn)``.
3. **Installed packages**: an entry point in the group ``ibllm_agent.tools`` pointing at a tool,
   a list of tools, or a zero-argument factory returning either::

       # pyproject.toml of your package
       [project.entry-points."ibllm_agent.tools"]
       weather = "my_pkg.tools:weather_tool"

Workspace files: arguments named ``image_path``/``audio_path``/…``_path``, ``path``, ``file`` or
``filename`` (or listed in ``path_fields=``) are resolved inside the thread's workspace before the
tool runs; tools receive absolute paths and may create outputs with ``current_context().workspace
.new_file("image")`` (see ``ToolContext``).
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import ToolRegistryError
from ibllm_agent.tools.catalog import INPUT_DEFAULTS, RUNTIME_DESCRIPTIONS, DescriptionVariant, tool_spec

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from ibllm_agent.agent.models import ModelPool
    from ibllm_agent.agent.workspace import ThreadWorkspace

__all__ = [
    "ENTRY_POINT_GROUP",
    "ToolContext",
    "ToolRegistry",
    "current_context",
    "default_registry",
    "gpt4tools_tool",
    "path_fields_of",
]

ENTRY_POINT_GROUP = "ibllm_agent.tools"
_PATH_NAMES = {"path", "file", "filename", "file_name", "filepath"}
_META_PATHS = "ibllm_path_fields"


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may use: its thread's workspace and the shared model pool."""

    thread_id: str
    workspace: ThreadWorkspace
    pool: ModelPool


_CONTEXT: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar("ibllm_tool_context", default=None)


def current_context() -> ToolContext:
    """The ``ToolContext`` of the tool call running in this thread (set by the agent runtime)."""
    ctx = _CONTEXT.get()
    if ctx is None:
        raise ToolRegistryError(
            "no agent tool context: this tool needs a thread workspace and runs only inside an agent "
            "built with ibllm_agent.build_agent"
        )
    return ctx


def path_fields_of(tool: BaseTool) -> tuple[str, ...]:
    """Argument names of ``tool`` that hold workspace file names."""
    declared = (tool.metadata or {}).get(_META_PATHS)
    if declared is not None:
        return tuple(declared)
    return tuple(f for f in tool.args if f in _PATH_NAMES or f.endswith("_path"))


def _as_tool(obj: Any, *, name: str | None = None, description: str | None = None) -> BaseTool:
    from langchain_core.tools import BaseTool, StructuredTool

    if isinstance(obj, BaseTool):
        if name and obj.name != name:
            obj = obj.model_copy(update={"name": name})
        if description and obj.description != description:
            obj = obj.model_copy(update={"description": description})
        return obj
    if callable(obj):
        desc = description or inspect.getdoc(obj)
        if not desc:
            raise ToolRegistryError(
                f"tool function {getattr(obj, '__name__', obj)!r} needs a docstring or description= "
                "(the model chooses tools by their descriptions)"
            )
        return StructuredTool.from_function(obj, name=name or obj.__name__, description=desc)
    raise ToolRegistryError(f"cannot use {obj!r} as a tool: pass a LangChain tool or a function")


def gpt4tools_tool(
    name: str,
    func: Callable[..., Any],
    *,
    model_key: str | None = None,
    loader: Callable[[str], Any] | None = None,
    size_bytes: int | str | None = None,
    device: str | None = None,
    description_variant: DescriptionVariant = "runtime",
    path_fields: Sequence[str] | None = None,
    response_format: str = "content",
) -> BaseTool:
    """A tool with a GPT4Tools catalog name, its exact description and its argument fields.

    ``func`` is called with the fields of ``INPUT_FIELDS[name]`` as keyword arguments (workspace
    paths already resolved to absolute paths). With ``model_key`` it is called as
    ``func(model, **fields)`` where ``model`` comes from the agent's ``ModelPool``, pinned for the
    duration of the call. ``loader(device) -> model`` (with ``size_bytes`` and a per-model
    ``device``) registers the model in the pool on first use, so a tool package is self-contained;
    several tools may share one ``model_key`` (e.g. GroundingDINO for detection and segmentation).
    Fields in ``catalog.INPUT_DEFAULTS[name]`` are optional. ``response_format="content_and_artifact"``:
    ``func`` returns ``(observation text, artifact)`` (LangChain keeps the artifact on the ToolMessage).
    """
    from langchain_core.tools import StructuredTool
    from pydantic import Field, create_model

    try:
        spec = tool_spec(name)
    except KeyError as exc:
        raise ToolRegistryError(str(exc.args[0])) from None
    defaults = INPUT_DEFAULTS.get(name, {})
    fields = {
        f: (str, Field(defaults[f], description=f.replace("_", " ")) if f in defaults
            else Field(description=f.replace("_", " ")))
        for f in spec.input_fields
    }
    schema = create_model(_schema_name(name), **fields)

    def run(**kwargs: Any) -> Any:
        if model_key is None:
            return func(**kwargs)
        pool = current_context().pool
        if loader is not None and model_key not in pool:
            try:
                pool.register(model_key, loader, size_bytes=size_bytes, device=device)
            except ToolRegistryError:  # another tool call registered it meanwhile
                pass
        with pool.use(model_key) as model:
            return func(model, **kwargs)

    paths = tuple(path_fields) if path_fields is not None else tuple(f for f in spec.input_fields if f.endswith("_path"))
    # The constructor, not from_function: from_function strips the description, and GPT4Tools'
    # descriptions keep their trailing spaces (the model saw them byte for byte).
    return StructuredTool(
        func=run,
        name=spec.name,
        description=spec.description(description_variant),
        args_schema=schema,
        response_format=response_format,
        metadata={_META_PATHS: paths, "gpt4tools": True, "model_key": model_key},
    )


def _schema_name(name: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in name.split()) + "Input"


class ToolRegistry:
    """Named tools the agent can be built with.

    ``register`` accepts LangChain tools and plain functions; a tool that takes a GPT4Tools name gets
    the catalog's exact description (``description_variant``: ``"runtime"``, the demo's text, or
    ``"training"``, the text the fine-tuned weights saw). ``load_entry_points`` adds the tools of
    installed packages (group ``ibllm_agent.tools``).
    """

    def __init__(self, description_variant: DescriptionVariant = "runtime"):
        self.description_variant = description_variant
        self._tools: dict[str, BaseTool] = {}
        self._lock = threading.Lock()
        self.sources: dict[str, str] = {}  # name -> where it came from ("python", "entry point x = …")

    def register(
        self,
        tool: Any,
        *,
        name: str | None = None,
        description: str | None = None,
        path_fields: Sequence[str] | None = None,
        replace: bool = False,
        source: str = "python",
    ) -> BaseTool:
        """Add a tool (or function); returns the registered ``BaseTool``.

        Raises:
            ToolRegistryError: a tool with that name exists (pass ``replace=True``), or ``tool`` is
                not usable as a tool.
        """
        t = _as_tool(tool, name=name, description=description)
        if t.name in RUNTIME_DESCRIPTIONS and description is None:
            exact = tool_spec(t.name).description(self.description_variant)
            if t.description != exact:
                t = t.model_copy(update={"description": exact})
        if path_fields is not None:
            unknown = set(path_fields) - set(t.args)
            if unknown:
                raise ToolRegistryError(f"tool {t.name!r} has no argument(s) {sorted(unknown)} for path_fields")
            t = t.model_copy(update={"metadata": {**(t.metadata or {}), _META_PATHS: tuple(path_fields)}})
        with self._lock:
            if t.name in self._tools and not replace:
                raise ToolRegistryError(
                    f"a tool named {t.name!r} is already registered (from {self.sources[t.name]}); "
                    "pass replace=True to override it"
                )
            self._tools[t.name] = t
            self.sources[t.name] = source
        return t

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._tools.pop(name, None) is None:
                raise ToolRegistryError(f"no tool named {name!r}; registered: {self._names_text()}")
            self.sources.pop(name, None)

    def get(self, name: str) -> BaseTool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolRegistryError(f"no tool named {name!r}; registered: {self._names_text()}") from None

    def names(self) -> list[str]:
        return list(self._tools)

    def tools(self, names: Iterable[str] | None = None) -> list[BaseTool]:
        """The registered tools (all, or those named, in the given order)."""
        if names is None:
            return list(self._tools.values())
        return [self.get(n) for n in names]

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, *, replace: bool = False) -> list[str]:
        """Register the tools that installed distributions declare in entry-point ``group``.

        Each entry point may name a tool, a list/tuple of tools, or a zero-argument factory
        returning either. Returns the names registered.

        Raises:
            ToolRegistryError: an entry point cannot be imported or does not give tools (the message
                names the entry point and its distribution).
        """
        added: list[str] = []
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            where = f"entry point {ep.name} = {ep.value} (distribution {dist})"
            try:
                obj = ep.load()
            except Exception as exc:
                raise ToolRegistryError(f"cannot load tool {where}: {type(exc).__name__}: {exc}") from exc
            items = _expand(obj, where)
            if not items:
                raise ToolRegistryError(f"{where} gives no tools (an empty list)")
            for item in items:
                added.append(self.register(item, replace=replace, source=where).name)
        return added

    def _names_text(self) -> str:
        return ", ".join(self._tools) or "none"

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()})"


def _expand(obj: Any, where: str) -> list[Any]:
    from langchain_core.tools import BaseTool

    if isinstance(obj, BaseTool):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [x for o in obj for x in _expand(o, where)]
    if callable(obj):
        try:
            params = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            params = []
        needs_args = any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                         for p in params)
        if needs_args:  # a plain function with arguments is itself the tool
            return [obj]
        try:
            made = obj()
        except Exception as exc:
            raise ToolRegistryError(f"tool factory {where} failed: {type(exc).__name__}: {exc}") from exc
        if made is None:
            raise ToolRegistryError(f"tool factory {where} returned None; expected a tool or a list of tools")
        return _expand(made, where)
    raise ToolRegistryError(f"{where} gives {type(obj).__name__}, not a tool, list of tools or factory")


_DEFAULT: ToolRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> ToolRegistry:
    """The process-wide registry: tools of installed packages (entry points), loaded once."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            reg = ToolRegistry()
            reg.load_entry_points()
            _DEFAULT = reg
        return _DEFAULT


def _reset_default_registry() -> None:
    """Forget the process-wide registry (tests that install fake distributions use this)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = None
