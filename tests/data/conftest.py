"""Fixtures for the data layer: a temp SQLite database with every table, a temp data
directory wired into the engine, and an organization with a user."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

import tidegate.catalog.models  # noqa: F401  (registers the data tables)
import tidegate.tables  # noqa: F401
from tidegate.access.sources import unrestricted_access
from tidegate.catalog.models import Source, SourceVersion
from tidegate.catalog.snapshots import VersionSnapshot
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import engine as data_engine
from tidegate.data import storage
from tidegate.db.base import Base
from tidegate.ids import new_id
from tidegate.orgs.models import Organization, User


def make_engine(path):
    db = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})

    @event.listens_for(db, "connect")
    def _pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    Base.metadata.create_all(db)
    return db


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "tidegate.db"


@pytest.fixture
def db(db_path):
    engine = make_engine(db_path)
    yield engine
    engine.dispose()


@pytest.fixture
def Session(db):  # noqa: N802 - a session factory
    return sessionmaker(db, expire_on_commit=False)


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    data_engine.configure(data_dir=path)
    yield path.resolve()
    storage.configure(None)


@pytest.fixture
def org(Session):
    with Session.begin() as session:
        org = Organization(id=new_id("org"), name=f"org-{uuid.uuid4().hex[:8]}")
        session.add(org)
        session.flush()
        user = User(id=new_id("usr"), org_id=org.id, email="a@example.com", role="admin")
        session.add(user)
    return org.id, user.id


@pytest.fixture
def make_source(Session, org, data_dir):
    """Create a committed source holding `table` (a pyarrow Table); returns the Source."""

    def make(table, name="sales"):
        with Session.begin() as session:
            source = Source(id=new_id("src"), org_id=org[0], name=name, created_by=org[1], service="api")
            session.add(source)
            session.flush()
            storage.write_new_version(session, source, table, append=False)
        return source

    return make


def current(Session, source_id):
    from tidegate.catalog.models import Source as S
    from tidegate.catalog.models import SourceVersion

    with Session() as session:
        src = session.get(S, source_id)
        return session.get(SourceVersion, src.current_version_id)


def rf(**columns) -> RowFilter:
    return RowFilter(clauses=tuple(Clause(col, frozenset(vals)) for col, vals in columns.items()))


ALLOW = RowFilter(clauses=())  # every row


def readable(version, row_filter):
    """The capability to read `version`'s rows through `row_filter` (tests only: what
    `open_source` gives a caller, narrowed from every row)."""
    if isinstance(version, SourceVersion):
        version = VersionSnapshot.of(version)
    return unrestricted_access(version, reason="engine tests").narrowed(row_filter)
