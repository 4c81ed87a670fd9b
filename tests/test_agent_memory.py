"""Memory URLs → checkpointers; thread listing and deletion."""

from __future__ import annotations

import sys

import pytest

from ibllm_agent.agent.memory import open_memory, parse_memory_url
from ibllm_agent.errors import MemoryURLError


@pytest.mark.parametrize(
    "url,expected",
    [
        ("memory", ("memory", "")),
        ("sqlite:///rel/chat.sqlite", ("sqlite", "rel/chat.sqlite")),
        ("sqlite:////abs/chat.sqlite", ("sqlite", "/abs/chat.sqlite")),
        ("sqlite://", ("sqlite", ":memory:")),
        ("sqlite:///:memory:", ("sqlite", ":memory:")),
        ("postgres://u:p@h/db", ("postgres", "postgres://u:p@h/db")),
        ("postgresql+psycopg://u@h/db", ("postgres", "postgresql://u@h/db")),
    ],
)
def test_parse_memory_url(url, expected):
    assert parse_memory_url(url) == expected


@pytest.mark.parametrize("url", ["", "redis://x", "sqlite:/x.db", "sqlite:///"])
def test_bad_urls_are_typed(url):
    with pytest.raises(MemoryURLError):
        parse_memory_url(url)


def _put(saver, thread_id):
    from langgraph.checkpoint.base import empty_checkpoint

    cfg = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    saver.put(cfg, empty_checkpoint(), {"source": "input", "step": -1}, {})


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_threads_list_and_delete(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'deep' / 'mem.sqlite'}" if kind == "sqlite" else "memory"
    with open_memory(url) as mem:
        assert mem.kind == kind and mem.threads() == []
        for t in ("a", "b", "a"):
            _put(mem.saver, t)
        assert sorted(i.thread_id for i in mem.threads()) == ["a", "b"]
        assert mem.threads()[0].thread_id == "a"  # most recent first
        assert mem.has_thread("b")
        mem.delete("b")
        assert [i.thread_id for i in mem.threads()] == ["a"] and not mem.has_thread("b")
    if kind == "sqlite":
        with open_memory(url) as again:  # persisted on disk
            assert [i.thread_id for i in again.threads()] == ["a"]


def test_default_url_is_sqlite_under_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("IBLLM_WORKSPACE_DIR", str(tmp_path / "wsdir"))
    with open_memory(None) as mem:
        assert mem.kind == "sqlite"
        assert (tmp_path / "wsdir" / "memory.sqlite").is_file()


def test_postgres_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.postgres", None)  # as if not installed
    with pytest.raises(MemoryURLError, match=r"pip install 'ibllm-agent\[serve\]'") as info:
        open_memory("postgres://user:secret@localhost/db")
    assert "secret" not in str(info.value) and "user:***@localhost" in str(info.value)


def test_folder_and_foreign_objects_rejected(tmp_path):
    with pytest.raises(MemoryURLError, match="folder"):
        open_memory(f"sqlite:///{tmp_path}")
    with pytest.raises(MemoryURLError, match="LangGraph checkpointer"):
        open_memory(42)
    bad = tmp_path / "not.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(MemoryURLError, match="not an SQLite database"):
        open_memory(f"sqlite:///{bad}")


def test_sqlite_memory_uses_wal_and_normal_sync(tmp_path):
    """A checkpoint per graph step: the rollback journal's fsyncs made them ~30 % of a tiny-model
    step (benchmarks/agent.py); WAL + synchronous=NORMAL keeps commits safe from a killed process."""
    with open_memory(f"sqlite:///{tmp_path / 'm.sqlite'}") as mem:
        conn = mem.saver.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with open_memory("sqlite:///:memory:") as mem:  # nothing to journal on disk
        assert mem.saver.conn.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
