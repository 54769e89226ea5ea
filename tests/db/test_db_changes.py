"""`db.changes.ChangeWatch`: the exact "has anything been committed since?" that the key
cache trusts. Every test here tries to make it answer "no change" when there was one (or
a number when it cannot know)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tidegate.db.changes import ChangeWatch


@pytest.fixture(params=["wal", "delete"])
def db_file(tmp_path, request):
    """A SQLite file with one table, in WAL (what tidegate uses) and rollback-journal mode."""
    path = tmp_path / "watched.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={request.param}")
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.close()
    return path


def url_of(path) -> str:
    return f"sqlite:///{path}"


def test_generation_is_stable_while_nothing_is_committed(db_file):
    watch = ChangeWatch(url_of(db_file))
    assert watch.supported
    first = watch.generation()
    assert first is not None
    assert [watch.generation() for _ in range(20)] == [first] * 20
    # Reads by another connection, and a write that is rolled back, commit nothing.
    other = sqlite3.connect(db_file, isolation_level=None)
    other.execute("SELECT count(*) FROM t").fetchone()
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    other.execute("ROLLBACK")
    other.close()
    assert watch.generation() == first


def test_generation_changes_after_a_commit_by_another_connection(db_file):
    watch = ChangeWatch(url_of(db_file))
    other = sqlite3.connect(db_file, isolation_level=None)
    seen = [watch.generation()]
    for n in range(5):  # every commit, not just the first one, is seen
        other.execute("INSERT INTO t VALUES (?)", (n,))
        seen.append(watch.generation())
        assert seen[-1] != seen[-2], f"commit {n} not seen: {seen}"
        assert watch.generation() == seen[-1]  # and then stable again
    assert len(set(seen)) == len(seen)  # never back to an earlier value
    other.close()


def test_generation_changes_after_a_commit_by_another_process(db_file):
    watch = ChangeWatch(url_of(db_file))
    before = watch.generation()
    script = textwrap.dedent("""
        import sqlite3, sys
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("INSERT INTO t VALUES (42)")
        conn.close()
    """)
    subprocess.run([sys.executable, "-c", script, str(db_file)], check=True, timeout=30)
    after = watch.generation()
    assert after is not None and after != before
    assert watch.generation() == after
    # Another process that only reads leaves it alone.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM t').fetchall()",
            str(db_file),
        ],
        check=True,
        timeout=30,
    )
    assert watch.generation() == after


def test_values_of_two_watches_are_never_equal_by_accident(db_file):
    """data_version numbers are per connection: a reopened connection must not reuse old values."""
    watch = ChangeWatch(url_of(db_file))
    first = watch.generation()
    watch._conn.close()  # the watch's connection breaks (e.g. the file was swapped)
    watch._conn = None
    assert watch.generation() != first


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1:5432/test",
        "postgresql://root@127.0.0.1:5432/test",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:shared?mode=memory&cache=shared&uri=true",
    ],
)
def test_none_where_it_cannot_be_told(url):
    watch = ChangeWatch(url)
    assert not watch.supported
    assert watch.generation() is None


def test_none_when_the_database_cannot_be_opened(tmp_path):
    watch = ChangeWatch(url_of(tmp_path / "no-such-directory" / "x.db"))
    assert watch.generation() is None  # unknown: a caller must not serve from a cache


def test_a_missing_database_file_is_not_created(tmp_path):
    missing = tmp_path / "gone.db"
    assert ChangeWatch(url_of(missing)).generation() is None
    assert not missing.exists()


def test_a_path_with_uri_characters_works(tmp_path):
    odd = tmp_path / "a dir#with%odd chars"  # (a "?" cannot be in a database URL at all)
    odd.mkdir()
    path = odd / "t.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER)")
    watch = ChangeWatch(url_of(path))
    before = watch.generation()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("INSERT INTO t VALUES (1)")
    assert before is not None and watch.generation() != before
    other.close()
    conn.close()
