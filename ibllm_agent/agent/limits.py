"""Limits that keep an agent session alive: tool time limit, observation size, one turn per thread.

=========================  =========  =============================================================
``AgentLimits`` field      default    what happens at the limit
=========================  =========  =============================================================
``tool_timeout_s``         300        the tool call is abandoned (its worker thread keeps running
                                      in the background, its result is dropped); the model gets
                                      ``Observation: Error: … did not finish within 300 s …`` and
                                      the turn goes on. ``None``/``0`` = no limit.
``max_observation_chars``  4000       a longer tool output is cut to its first characters plus a
                                      note saying how much was left out (the chat model also cuts
                                      observations further so the next prompt fits its context).
``turn_wait_s``            120        a second turn sent to a thread that is running one waits for
                                      it (serialised, also across processes sharing one SQLite
                                      file); after this long it is refused with ``ThreadBusyError``.
                                      ``0`` = refuse at once.
=========================  =========  =============================================================

The turn lock of a SQLite memory is a file lock (``fcntl.flock``) per thread in
``<database>.locks/`` next to the database file, so two processes (a ``chat`` session and a server)
sharing the file cannot interleave turns of one thread; in-process and Postgres memories use an
in-process lock only.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError, ThreadBusyError
from ibllm_agent.protocol import cut_observation

__all__ = ["AgentLimits", "ToolTimeout", "TurnLocks", "call_with_deadline", "cut_observation"]

DEFAULT_TOOL_TIMEOUT_S = 300.0
DEFAULT_MAX_OBSERVATION_CHARS = 4000
DEFAULT_TURN_WAIT_S = 120.0
_POLL_S = 0.05


@dataclass(frozen=True)
class AgentLimits:
    """Per-agent limits (see the module docstring); ``build_agent(limits=AgentLimits(...))``."""

    tool_timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS
    turn_wait_s: float = DEFAULT_TURN_WAIT_S

    def __post_init__(self) -> None:
        if self.tool_timeout_s is not None and not self.tool_timeout_s >= 0:
            raise ConfigError(f"tool_timeout_s must be >= 0 or None, got {self.tool_timeout_s!r}")
        if not isinstance(self.max_observation_chars, int) or self.max_observation_chars < 200:
            raise ConfigError(f"max_observation_chars must be an int >= 200, got {self.max_observation_chars!r}")
        if not self.turn_wait_s >= 0:
            raise ConfigError(f"turn_wait_s must be >= 0, got {self.turn_wait_s!r}")


class ToolTimeout(Exception):
    """A tool call did not finish within its time limit (internal: becomes an error observation)."""


def call_with_deadline(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """``fn()`` in a daemon worker thread that sees the caller's contextvars; its result, or its
    exception re-raised here; ``ToolTimeout`` when it runs past ``timeout_s``.

    Python cannot kill a thread: a hung tool keeps its worker until it returns, but the caller (the
    agent turn, the CLI, the server) goes on. Daemon threads never block interpreter exit.
    """
    if not timeout_s:
        return fn()
    ctx = contextvars.copy_context()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = ctx.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and re-raised there
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="ibllm-tool-call", daemon=True).start()
    if not done.wait(timeout_s):
        raise ToolTimeout(f"did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def timeout_observation(name: str | None, timeout_s: float) -> str:
    return (
        f"Error: the tool {name or '?'} did not finish within {timeout_s:g} s (time limit) and was "
        "abandoned; no result. Answer without it or try a simpler request."
    )


class TurnLocks:
    """One running turn per thread: an in-process lock per thread id, plus a file lock per thread in
    ``lock_dir`` (when given) for processes sharing one database file."""

    def __init__(self, lock_dir: str | os.PathLike[str] | None = None, wait_s: float = DEFAULT_TURN_WAIT_S):
        self.lock_dir = Path(lock_dir) if lock_dir is not None else None
        self.wait_s = wait_s
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def for_sqlite(cls, db_path: str | os.PathLike[str] | None, wait_s: float) -> TurnLocks:
        """Locks next to the SQLite file ``db_path`` (``None`` / ``:memory:`` → in-process only)."""
        if db_path is None or str(db_path) == ":memory:":
            return cls(None, wait_s)
        path = Path(db_path).expanduser().absolute()
        return cls(path.parent / f"{path.name}.locks", wait_s)

    def _thread_lock(self, thread_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(thread_id, threading.Lock())

    @contextmanager
    def hold(self, thread_id: str) -> Iterator[None]:
        """Hold ``thread_id``'s turn lock; ``ThreadBusyError`` after waiting ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        lock = self._thread_lock(thread_id)
        acquired = lock.acquire(timeout=self.wait_s) if self.wait_s > 0 else lock.acquire(blocking=False)
        if not acquired:
            raise self._busy(thread_id)
        fd = None
        try:
            if self.lock_dir is not None:
                fd = self._file_lock(thread_id, deadline)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock
            lock.release()

    def _file_lock(self, thread_id: str, deadline: float) -> int | None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the in-process lock still holds
            return None
        assert self.lock_dir is not None
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:32] + ".lock"
        fd = os.open(self.lock_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._busy(thread_id) from None
                time.sleep(_POLL_S)

    def _busy(self, thread_id: str) -> ThreadBusyError:
        return ThreadBusyError(
            f"thread {thread_id!r} is busy: another turn is running on it (waited {self.wait_s:g} s); "
            "send the message again when that turn has finished"
        )
