"""Engine, sessions and automatic migrations.

The data home (`LLMDEV_HOME`, default ./workspace) holds everything a user
makes; the index is SQLite inside it (WAL mode, busy timeout) unless
`DATABASE_URL` points at PostgreSQL. The schema is created and upgraded by the
Alembic migrations in storage/migrations, applied the first time a process asks
for the engine.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

from storage.tables import UTCDateTime, utcnow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def data_home() -> Path:
    """The folder that holds the database, models, data sets, runs and exports."""
    home = Path(os.environ.get("LLMDEV_HOME") or "workspace").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        return f"sqlite:///{data_home() / 'platform.db'}"
    # Hosted PostgreSQL providers hand out postgres:// URLs; SQLAlchemy wants a driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _on_sqlite_connect(dbapi_conn, _record) -> None:
    # WAL lets the UI read while a worker writes; busy_timeout waits for a
    # writer instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: the configured one), migrated to head."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
                event.listen(engine, "connect", _on_sqlite_connect)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            migrate(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Forget every engine (tests switch data homes; workers fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Only one process migrates at a time (two tabs or a worker starting together)."""
    if engine.dialect.name == "sqlite":
        db_path = engine.url.database or ""
        lock_path = Path(db_path + ".migrate.lock") if db_path not in ("", ":memory:") else None
        if lock_path is None:
            yield
            return
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(742001)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(742001)"))
                conn.commit()


def migrate(engine: Engine) -> None:
    """Apply the Alembic migrations up to head (cheap when already there)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    with _migration_lock(engine):
        target = _sqlite_transactional(engine) if engine.dialect.name == "sqlite" else engine
        try:
            # one transaction: a crash half-way leaves the schema as it was
            with target.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            if target is not engine:
                target.dispose()


def _sqlite_transactional(engine: Engine) -> Engine:
    """An engine whose transactions really wrap DDL: pysqlite's legacy mode
    commits before each CREATE TABLE (SQLAlchemy's documented pysqlite recipe)."""
    mig = create_engine(engine.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(mig, "connect")
    def _connect(dbapi_conn, record) -> None:
        dbapi_conn.isolation_level = None
        _on_sqlite_connect(dbapi_conn, record)

    @event.listens_for(mig, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return mig


def write_lock(s: Session) -> None:
    """Serialise job state changes across processes for the rest of this
    transaction: SQLite's write lock (a write statement as the first one; waits
    on busy_timeout) or a PostgreSQL transaction-scoped advisory lock."""
    if s.bind.dialect.name == "sqlite":
        s.execute(text("UPDATE jobs SET id = id WHERE 1 = 0"))
    else:
        s.execute(text("SELECT pg_advisory_xact_lock(742002)"))


class db_now(FunctionElement):
    """The database server's time, in a statement: `.values(heartbeat_at=db_now())`.

    Every timestamp the job lifecycle compares (claim, heartbeat, cancel request,
    end) is written with it, and `clock` reads it: a worker on another machine (a
    Ray node) and the app then share one clock, so a node whose clock is minutes
    off does not make its live job look stale. SQLite is a file on this machine:
    its clock is this machine's."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw) -> str:
    return "clock_timestamp()"  # the time now, not the transaction's start (now())


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"  # UTC, the text SQLAlchemy stores for a datetime


_offsets: dict[str, timedelta] = {}  # per database: its clock minus this machine's, as `clock` last found it


def clock(s: Session) -> datetime:
    """Now (UTC) by the database's clock: see `db_now`."""
    now = s.scalar(select(db_now()))
    _offsets[str(s.get_bind().url)] = now - utcnow()
    return now


def clock_now() -> datetime:
    """Now by the database's clock without asking it each time: this machine's
    clock moved by the difference `clock` measured last (once, if it never has).
    For what is shown (a job's elapsed time, when a row was made); what is
    compared uses `clock`. SQLite's clock is this machine's."""
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        return utcnow()
    key = str(engine.url)
    if key not in _offsets:
        with session() as s:
            clock(s)
    return utcnow() + _offsets.get(key, timedelta(0))


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    s = session_factory(url)()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()
