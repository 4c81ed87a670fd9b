"""Agent memory: a memory URL → a LangGraph checkpointer, plus thread listing and deletion.

=====================================  ==============================================================
URL                                    checkpointer
=====================================  ==============================================================
``sqlite:///relative/file.sqlite``     ``SqliteSaver`` on a file relative to the current directory
``sqlite:////abs/path/memory.sqlite``  ``SqliteSaver`` on an absolute path (the default, under the
                                       workspace: ``Settings.memory_url``)
``sqlite://`` / ``sqlite:///:memory:`` ``SqliteSaver`` in memory (one process)
``postgres://…`` / ``postgresql://…``  ``PostgresSaver`` (extra ``ibllm-agent[serve]``)
``memory``                             ``InMemorySaver`` (one process, lost on exit)
=====================================  ==============================================================

A checkpoint holds the full message list of a thread after every step, so a thread continues in a
new process (SQLite/Postgres) exactly where it stopped.
"""

from __future__ import annotations

import sqlite3
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ibllm_agent.errors import MemoryURLError

__all__ = ["Memory", "ThreadInfo", "open_memory", "parse_memory_url"]


@dataclass(frozen=True)
class ThreadInfo:
    """One stored thread: its id and the time of its latest checkpoint (ISO 8601, UTC)."""

    thread_id: str
    updated_at: str


def parse_memory_url(url: str) -> tuple[str, str]:
    """Split a memory URL into ``(kind, target)``: kind is ``sqlite`` | ``postgres`` | ``memory``.

    For sqlite the target is a file path (or ``:memory:``); for postgres the URL itself.
    """
    if not isinstance(url, str) or not url.strip():
        raise MemoryURLError(f"memory URL must be a non-empty string, got {url!r}")
    url = url.strip()
    if url in {"memory", "memory://", "inmemory"}:
        return "memory", ""
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        return "postgres", url.replace("postgresql+psycopg://", "postgresql://", 1)
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest in {"", "//", "///:memory:", "//:memory:"}:
            return "sqlite", ":memory:"
        if not rest.startswith("///"):
            raise MemoryURLError(
                f"malformed sqlite memory URL {url!r}: use sqlite:///relative/path.sqlite or "
                "sqlite:////absolute/path.sqlite"
            )
        path = unquote(rest[3:])
        if not path:
            raise MemoryURLError(f"sqlite memory URL {url!r} names no file")
        return "sqlite", path
    raise MemoryURLError(
        f"unsupported memory URL {url!r}: use sqlite:///PATH, postgres://USER@HOST/DB or memory"
    )


@dataclass
class Memory:
    """An open checkpointer and what it was opened from. Close it (or use ``with``) when done."""

    url: str
    kind: str
    saver: Any  # langgraph BaseCheckpointSaver
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    path: str | None = None  # the SQLite database file (None: in memory, Postgres, in-process)

    def threads(self) -> list[ThreadInfo]:
        """Stored threads, most recently updated first."""
        latest: dict[str, str] = {}
        if self.kind == "sqlite":
            conn: sqlite3.Connection = self.saver.conn
            with self.saver.lock:
                ids = [r[0] for r in conn.execute(
                    "SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_ns = ''"
                ).fetchall()]
            for thread_id in ids:
                tup = self.saver.get_tuple({"configurable": {"thread_id": thread_id}})
                latest[str(thread_id)] = tup.checkpoint.get("ts", "") if tup else ""
        else:
            for tup in self.saver.list(None):
                cfg = tup.config["configurable"]
                if cfg.get("checkpoint_ns", ""):
                    continue
                ts = tup.checkpoint.get("ts", "")
                tid = str(cfg["thread_id"])
                if ts >= latest.get(tid, ""):
                    latest[tid] = ts
        return sorted((ThreadInfo(t, ts) for t, ts in latest.items()), key=lambda i: i.updated_at, reverse=True)

    def has_thread(self, thread_id: str) -> bool:
        return self.saver.get_tuple({"configurable": {"thread_id": str(thread_id)}}) is not None

    def delete(self, thread_id: str) -> None:
        """Delete every checkpoint of ``thread_id``."""
        self.saver.delete_thread(str(thread_id))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_memory(url: str | Any | None = None) -> Memory:
    """Open the checkpointer of a memory URL (or wrap an existing checkpointer object).

    ``None`` uses ``Settings.memory_url`` (SQLite under the workspace). Postgres needs the optional
    extra: ``pip install 'ibllm-agent[serve]'``.

    Raises:
        MemoryURLError: malformed URL, missing Postgres extra, or a database that cannot be opened.
    """
    if url is not None and not isinstance(url, str):
        from langgraph.checkpoint.base import BaseCheckpointSaver

        if not isinstance(url, BaseCheckpointSaver):
            raise MemoryURLError(
                f"memory must be a URL string or a LangGraph checkpointer, got {type(url).__name__}"
            )
        kind = "sqlite" if type(url).__name__ == "SqliteSaver" else type(url).__name__
        path = None
        if kind == "sqlite":
            row = url.conn.execute("PRAGMA database_list").fetchone()
            path = (row[2] or None) if row else None
        return Memory(url=f"<{type(url).__name__}>", kind=kind, saver=url, path=path)
    if url is None:
        from ibllm_agent.config import get_settings

        url = get_settings().memory_url
    kind, target = parse_memory_url(url)
    stack = ExitStack()
    if kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        return Memory(url=url, kind=kind, saver=InMemorySaver(), _stack=stack)
    if kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        if target != ":memory:":
            path = Path(target).expanduser()
            if path.is_dir():
                raise MemoryURLError(f"memory URL {url!r} points to a folder, not a database file")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemoryURLError(f"cannot create the folder of memory database {path}: {exc}") from exc
            target = str(path)
            if path.is_file():
                check_sqlite_file(path)
        try:
            # check_same_thread=False: the saver serialises access with its own lock, and the agent
            # runs tools/streams in worker threads.
            conn = sqlite3.connect(target, check_same_thread=False)
            stack.callback(conn.close)
            if target != ":memory:":
                # Write-ahead log + synchronous=NORMAL: a committed checkpoint survives a killed
                # process (what durability="sync" is for), without the rollback journal's several
                # fsyncs per commit; only an OS crash or power loss can drop the latest commits.
                # Measured (benchmarks/agent.py, ~12 checkpointer calls per model step): from ~30 %
                # of a tiny-model step to under 1 %.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            saver = SqliteSaver(conn)
            saver.setup()
        except sqlite3.DatabaseError as exc:
            stack.close()
            raise MemoryURLError(f"cannot open memory database {target}: {exc}") from exc
        return Memory(url=url, kind=kind, saver=saver, _stack=stack,
                      path=None if target == ":memory:" else target)
    # postgres
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        raise MemoryURLError(
            f"memory URL {_redact(url)} needs PostgreSQL support: pip install 'ibllm-agent[serve]' "
            "(langgraph-checkpoint-postgres and psycopg)"
        ) from None
    try:
        saver = stack.enter_context(PostgresSaver.from_conn_string(target))
        saver.setup()
    except Exception as exc:  # psycopg.OperationalError etc.; the URL may hold a password: redact
        stack.close()
        raise MemoryURLError(f"cannot connect to {_redact(url)}: {type(exc).__name__}: {exc}") from exc
    return Memory(url=url, kind=kind, saver=saver, _stack=stack)


_SQLITE_MAGIC = b"SQLite format 3\x00"
# Tables LangGraph's SqliteSaver creates, and the columns it reads; anything else is not our file.
_OUR_TABLES = {"checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint", "metadata"},
               "writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel"}}


def check_sqlite_file(path: Path) -> None:
    """Refuse a memory file that is damaged or belongs to another program, before anything opens it
    for writing (``SqliteSaver.setup`` would add tables and switch the journal mode). The check
    opens the file read-only and ``immutable`` (SQLite then writes nothing, not even a lock file).

    Raises:
        MemoryURLError: not an SQLite file, an unreadable one, or one with other tables.
    """
    advice = "it was left unchanged; use another file (--memory sqlite:///PATH) or move this one away"
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise MemoryURLError(f"cannot read memory database {path}: {exc.strerror or exc}") from None
    if not head:
        return  # an empty file is an empty database: SQLite starts it
    if head != _SQLITE_MAGIC:
        raise MemoryURLError(f"memory database {path} is not an SQLite database (damaged, or another "
                             f"program's file); {advice}")
    uri = f"{path.absolute().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            tables = {name: {row[1] for row in conn.execute(f"PRAGMA table_info('{_sql_text(name)}')")}
                      for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                      if not name.startswith("sqlite_")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise MemoryURLError(f"memory database {path} is damaged ({exc}); {advice}") from None
    foreign = sorted(n for n in tables if n not in _OUR_TABLES or not _OUR_TABLES[n] <= tables[n])
    if foreign:
        raise MemoryURLError(
            f"memory database {path} belongs to another program (table(s) {', '.join(foreign[:5])} are not "
            f"ibllm-agent's checkpoints); {advice}"
        )


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _redact(url: str) -> str:
    """``postgres://user:secret@host/db`` → ``postgres://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
