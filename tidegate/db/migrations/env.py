from alembic import context
from sqlalchemy import create_engine, event

from tidegate.db.engine import get_engine
from tidegate.tables import Base

config = context.config
target_metadata = Base.metadata


def _sqlite_migration_engine(url: str):
    """A private engine whose whole migration run is ONE SQLite transaction.

    pysqlite commits DDL on its own, so a crash mid-migration would leave half a schema;
    with the driver's transaction handling off and an explicit BEGIN, DDL is transactional.
    Foreign keys are off for the run: batch migrations rebuild tables (copy, drop, rename)
    and the drop of a referenced table would fail. (SQLAlchemy's documented recipe.)
    """
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: no sqlalchemy.url (tidegate.db.engine.migrate sets it)")
    sqlite = url.startswith("sqlite")
    engine = _sqlite_migration_engine(url) if sqlite else get_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        if sqlite:
            engine.dispose()


run_migrations_online()
