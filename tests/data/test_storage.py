"""Versions on disk: appends and replaces, crash safety, garbage collection, files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import select

from tidegate.catalog.models import File, Source, SourceVersion
from tidegate.data import engine, ingest, storage
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, InvalidRequest

from .conftest import ALLOW, current, readable

BASE = pa.table({"id": [1, 2, 3], "region": ["EU", "US", "EU"]})


def all_rows(version):
    rows, total = engine.read_page(readable(version, ALLOW), page=1, page_size=10_000)
    assert total == len(rows)
    return rows


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_replace_then_append_layout(Session, make_source, data_dir):
    source = make_source(BASE)
    first = current(Session, source.id)
    assert first.row_count == 3 and first.columns == [
        {"name": "id", "type": "integer"},
        {"name": "region", "type": "string"},
    ]
    assert first.parts == [f"{first.id}/part-0000.parquet"]
    assert (data_dir / source.org_id / source.id / first.parts[0]).is_file()

    with Session.begin() as session:
        src = session.get(Source, source.id)
        storage.write_new_version(
            session, src, ingest.rows_to_table([{"id": 4, "region": "APAC"}], columns=first.columns), append=True
        )
    second = current(Session, source.id)
    assert second.id != first.id
    assert second.parts == first.parts + [f"{second.id}/part-0001.parquet"]
    assert second.row_count == 4
    assert [r["id"] for r in all_rows(second)] == [1, 2, 3, 4]  # part order is row order
    assert [r["id"] for r in all_rows(first)] == [1, 2, 3]  # the old version is untouched

    with Session.begin() as session:
        src = session.get(Source, source.id)
        storage.write_new_version(session, src, pa.table({"x": ["only"]}), append=False)
    third = current(Session, source.id)
    assert third.parts == [f"{third.id}/part-0000.parquet"]
    assert third.columns == [{"name": "x", "type": "string"}]
    assert all_rows(third) == [{"x": "only"}]
    assert [r["id"] for r in all_rows(second)] == [1, 2, 3, 4]


def test_append_to_a_source_without_version_is_a_replace(Session, org, data_dir):
    with Session.begin() as session:
        source = Source(id="src_fresh", org_id=org[0], name="n", created_by=org[1])
        session.add(source)
        version = storage.write_new_version(session, source, BASE, append=True)
    assert current(Session, "src_fresh").id == version.id and version.row_count == 3


def test_empty_writes_need_no_part_file(Session, make_source, data_dir):
    source = make_source(ingest.rows_to_table([]))
    version = current(Session, source.id)
    assert version.parts == [] and version.columns == [] and all_rows(version) == []
    assert b"".join(engine.stream_csv(readable(version, ALLOW))) == b""
    with pytest.raises(InvalidRequest) as info:
        engine.run_query(readable(version, ALLOW), "SELECT 1", page=1, page_size=1)
    assert info.value.code == "invalid_query" and "no columns" in info.value.message
    schema_only = make_source(ingest.parse_file(b"a,b\n", filename="x.csv"), name="empty")
    version = current(Session, schema_only.id)
    assert version.parts == [] and [c["name"] for c in version.columns] == ["a", "b"]
    assert engine.read_page(readable(version, ALLOW), page=1, page_size=5) == ([], 0)
    assert b"".join(engine.stream_csv(readable(version, ALLOW))).decode().strip() == '"a","b"'
    with Session.begin() as session:  # appending to a source with no columns defines them
        storage.write_new_version(session, session.get(Source, source.id), pa.table({"z": [1]}), append=True)
    assert all_rows(current(Session, source.id)) == [{"z": 1}]
    with pytest.raises(InvalidRequest) as info:  # but a schema, even without rows, is kept
        with Session.begin() as session:
            storage.write_new_version(session, session.get(Source, schema_only.id), pa.table({"z": [1]}), append=True)
    assert info.value.code == "unknown_column"


def test_append_type_mismatch_changes_nothing(Session, make_source, data_dir):
    source = make_source(BASE)
    before = current(Session, source.id)
    files_before = files_under(data_dir)
    with pytest.raises(InvalidRequest) as info:
        with Session.begin() as session:
            src = session.get(Source, source.id)
            rows = [{"id": 5, "region": "EU"}, {"id": "six", "region": "US"}]
            storage.write_new_version(session, src, ingest.rows_to_table(rows), append=True)
    assert info.value.code == "type_mismatch"
    assert 'Column "id"' in info.value.message and "row 2 " in info.value.message
    after = current(Session, source.id)
    assert after.id == before.id and after.row_count == 3
    assert files_under(data_dir) == files_before
    with Session() as session:
        assert (
            session.scalar(
                select(SourceVersion).where(SourceVersion.source_id == source.id).where(SourceVersion.id != before.id)
            )
            is None
        )
    assert [r["id"] for r in all_rows(after)] == [1, 2, 3]


def test_rollback_between_file_write_and_commit_leaves_old_version_and_collectable_orphans(
    Session, make_source, data_dir
):
    source = make_source(BASE)
    old = current(Session, source.id)
    session = Session()
    src = session.get(Source, source.id)
    new = storage.write_new_version(session, src, pa.table({"id": [9], "region": ["XX"]}), append=True)
    orphan = data_dir / source.org_id / source.id / new.parts[-1]
    assert orphan.is_file()  # durable before the commit...
    session.rollback()  # ...but the commit never happens
    session.close()
    assert current(Session, source.id).id == old.id
    assert [r["id"] for r in all_rows(old)] == [1, 2, 3]

    with Session() as session:
        assert storage.collect_garbage(session, data_dir).deleted_files == []  # too young by default
        report = storage.collect_garbage(session, data_dir, min_age_seconds=0)
    assert report.deleted_files == [str(orphan.relative_to(data_dir))]
    assert not orphan.exists() and not orphan.parent.exists()
    assert [r["id"] for r in all_rows(old)] == [1, 2, 3]
    engine.clear_cache()
    assert [r["id"] for r in all_rows(old)] == [1, 2, 3]  # files of the live version remain


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import pyarrow as pa
    sys.path.insert(0, {root!r})
    from sqlalchemy.orm import sessionmaker
    from tests.data.conftest import make_engine
    from tidegate.data import engine, storage
    from tidegate.catalog.models import Source
    engine.configure(data_dir={data_dir!r})
    mode = {mode!r}
    if mode == "during_write":
        real_rename = os.rename
        def rename(src, dst):  # killed with the temp file fsynced but not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
    Session = sessionmaker(make_engine({db_path!r}))
    session = Session()
    source = session.get(Source, {source_id!r})
    storage.write_new_version(session, source, pa.table({{"id": [7, 8], "region": ["NEW", "NEW"]}}), append=True)
    if mode == "after_commit":
        session.commit()
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("mode", ["during_write", "before_commit", "after_commit"])
def test_kill_9_leaves_old_or_new_never_a_mix(Session, make_source, data_dir, db_path, mode):
    source = make_source(BASE)
    old = current(Session, source.id)
    script = CRASH_SCRIPT.format(
        root=str(Path(__file__).resolve().parents[2]),
        data_dir=str(data_dir),
        db_path=str(db_path),
        source_id=source.id,
        mode=mode,
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]

    engine.clear_cache()
    now = current(Session, source.id)
    rows = [r["id"] for r in all_rows(now)]
    if mode == "after_commit":
        assert now.id != old.id and rows == [1, 2, 3, 7, 8]
    else:
        assert now.id == old.id and rows == [1, 2, 3]
    leftovers = [p for p in (data_dir / source.org_id / source.id).rglob("*") if p.is_file()]
    temp = [p for p in leftovers if storage.TMP_MARK in p.name]
    assert bool(temp) == (mode == "during_write")

    with Session() as session:
        report = storage.collect_garbage(session, data_dir, min_age_seconds=0)
        if mode == "during_write":
            assert report.deleted_files == []  # a temp file is kept for a minute...
            old_time = time.time() - 120
            for path in temp:
                os.utime(path, (old_time, old_time))
            report = storage.collect_garbage(session, data_dir, min_age_seconds=0)
            assert sorted(report.deleted_files) == sorted(str(p.relative_to(data_dir)) for p in temp)
        elif mode == "before_commit":
            assert len(report.deleted_files) == 1 and "part-0001" in report.deleted_files[0]
        else:
            assert report.deleted_files == []  # everything is referenced
    engine.clear_cache()
    assert [r["id"] for r in all_rows(current(Session, source.id))] == rows


def test_concurrent_writers_cannot_lose_an_append(Session, make_source, data_dir):
    source = make_source(BASE)
    first, second = Session(), Session()
    try:
        src_a = first.get(Source, source.id)
        src_b = second.get(Source, source.id)
        storage.write_new_version(first, src_a, pa.table({"id": [10], "region": ["A"]}), append=True)
        first.commit()
        # `second` read the source before `first` committed; its stale pointer is refreshed
        # from the database, so this append builds on `first`'s version.
        storage.write_new_version(second, src_b, pa.table({"id": [11], "region": ["B"]}), append=True)
        second.commit()
    finally:
        first.close()
        second.close()
    assert [r["id"] for r in all_rows(current(Session, source.id))] == [1, 2, 3, 10, 11]


def test_compare_and_set_refuses_a_stale_switch(Session, make_source, data_dir, monkeypatch):
    source = make_source(BASE)
    session = Session()
    try:
        src = session.get(Source, source.id)
        real_get = session.get

        def racing_get(model, ident, *args, **kwargs):
            result = real_get(model, ident, *args, **kwargs)
            if model is SourceVersion:  # another writer commits right after we read the pointer
                with Session.begin() as other:
                    storage.write_new_version(
                        other, other.get(Source, source.id), pa.table({"id": [99], "region": ["Z"]}), append=True
                    )
            return result

        monkeypatch.setattr(session, "get", racing_get)
        with pytest.raises(Conflict) as info:
            storage.write_new_version(session, src, pa.table({"id": [5], "region": ["Q"]}), append=True)
        assert info.value.code == "concurrent_write"
        session.rollback()
    finally:
        session.close()
    assert [r["id"] for r in all_rows(current(Session, source.id))] == [1, 2, 3, 99]


def test_prune_then_collect_removes_superseded_versions(Session, make_source, data_dir):
    source = make_source(BASE)
    old = current(Session, source.id)
    with Session.begin() as session:
        storage.write_new_version(session, session.get(Source, source.id), pa.table({"v": [1]}), append=False)
    new = current(Session, source.id)
    with Session.begin() as session:
        assert storage.prune_versions(session) == []  # superseded just now: readers may hold it
        assert len(storage.prune_versions(session, keep_seconds=0)) == 1
    with Session() as session:
        report = storage.collect_garbage(session, data_dir, min_age_seconds=0)
        assert report.deleted_files == [f"{source.org_id}/{source.id}/{old.parts[0]}"]
        assert session.get(SourceVersion, old.id) is None
    assert all_rows(new) == [{"v": 1}]

    with Session.begin() as session:
        session.get(Source, source.id).deleted_at = utcnow() - timedelta(hours=2)
    with Session.begin() as session:
        assert len(storage.prune_versions(session)) == 1
    with Session() as session:
        storage.collect_garbage(session, data_dir, min_age_seconds=0)
    assert not (data_dir / source.org_id / source.id).exists()


def test_store_file_and_read_it_back(Session, org, data_dir):
    with Session.begin() as session:
        record = storage.store_file(
            session,
            org_id=org[0],
            created_by=org[1],
            name="../../etc/people.csv",
            content=b"a,b\n1,x\n2,y\n",
            content_type="text/csv",
        )
    assert record.name == "people.csv" and record.size == 12 and record.row_count == 2
    assert record.columns == [{"name": "a", "type": "integer"}, {"name": "b", "type": "string"}]
    path = storage.file_path(record)
    assert path == data_dir / org[0] / "files" / record.id and path.read_bytes() == b"a,b\n1,x\n2,y\n"
    assert storage.read_file_table(record).to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with Session.begin() as session:
        other = storage.store_file(session, org_id=org[0], created_by=org[1], name="notes.txt", content=b"hi")
    assert other.columns is None and other.row_count is None
    with pytest.raises(InvalidRequest) as info:
        with Session.begin() as session:
            storage.store_file(session, org_id=org[0], created_by=org[1], name="bad.csv", content=b"a,b\n1,2,3\n")
    assert info.value.code == "invalid_file"
    with Session.begin() as session:
        session.delete(session.get(File, record.id))
    with Session() as session:
        report = storage.collect_garbage(session, data_dir, min_age_seconds=0)
    assert report.deleted_files == [f"{org[0]}/files/{record.id}"]
    assert storage.file_path(other).exists()


@pytest.mark.parametrize(
    "name,code", [("", "invalid_file_name"), ("a\nb.csv", "invalid_file_name"), ("x" * 300, "invalid_file_name")]
)
def test_store_file_refuses_bad_names(Session, org, data_dir, name, code):
    with pytest.raises(InvalidRequest) as info:
        with Session.begin() as session:
            storage.store_file(session, org_id=org[0], created_by=org[1], name=name, content=b"x")
    assert info.value.code == code


def test_corrupt_part_names_are_never_followed(Session, make_source, data_dir):
    source = make_source(BASE)
    version = current(Session, source.id)
    version.parts = ["../../../etc/passwd"]
    with pytest.raises(ValueError):
        storage.part_paths(version)
