"""Engines and migrations for the coordinator's database.

- PostgreSQL (production): `pool_pre_ping` so a restarted server costs one reconnect, not a
  burst of failed requests; a connect timeout so a dead server fails fast instead of hanging.
- SQLite (the embedded default): WAL, foreign keys on, `synchronous=FULL` (an assignment is
  committed before Agent.Launch and must survive a power cut), and every transaction starts with
  `BEGIN IMMEDIATE`. pysqlite would otherwise begin only at the first write, so a transaction's
  reads and writes would not be atomic, and a read-then-write transaction racing another writer
  fails with SQLITE_BUSY instead of waiting. IMMEDIATE takes the one writer lock up front: writers
  queue (busy_timeout) and the repository's read-check-write sequences are serialisable. A
  read-only caller that would rather not queue can use
  `engine.execution_options(gpufleet_sqlite_begin="DEFERRED")`.

`migrate()` runs `alembic upgrade head` programmatically (no alembic.ini), under a PostgreSQL
advisory lock so replicas starting together migrate once, and refuses a database whose revision
this code does not know (it was migrated by a newer gpufleet).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

log = logging.getLogger("gpufleet.coordinator.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_FILE = "coordinator.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_BEGIN_OPTION = "gpufleet_sqlite_begin"
# Arbitrary constant: the key of the advisory lock that serialises migrations of one database.
MIGRATION_LOCK_KEY = 0x6770_7566_6C74  # "gpuflt"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gpufleet than this one."""


def default_sqlite_url(state_dir: str | Path) -> str:
    """The embedded default: `<state_dir>/coordinator.db`."""
    return f"sqlite:///{Path(state_dir).expanduser().resolve() / SQLITE_FILE}"


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False, connect_timeout_s: int = 10) -> Engine:
    """An Engine for a `sqlite:///PATH` or `postgresql+psycopg://...` URL, set up as described above."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    if parsed.get_backend_name() != "postgresql":
        backend = parsed.get_backend_name()
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql+psycopg")
    return sa.create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"connect_timeout": connect_timeout_s, "application_name": "gpufleet-coordinator"},
    )


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    kwargs: dict[str, Any] = {}
    if database in ("", ":memory:"):
        # One shared connection, else every pooled connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite (see the module docstring).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            _set_wal(cur)
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN" if mode == "DEFERRED" else "BEGIN IMMEDIATE")

    return engine


def _set_wal(cur: Any) -> None:
    """Switching to WAL needs the database to itself and SQLite answers "database is locked" at once
    (no busy handler) while another connection opens the same new file: retry within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _alembic_config() -> Config:
    cfg = Config()
    # ConfigParser interpolates '%': escape it in the path.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against the migrations this code ships."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _status(conn: Connection, script: ScriptDirectory) -> SchemaStatus:
    head = script.get_current_head()
    assert head is not None, "the migrations directory has no revision"
    known = {rev.revision for rev in script.walk_revisions()}
    heads = MigrationContext.configure(conn).get_current_heads()
    unknown = [rev for rev in heads if rev not in known]
    if unknown:
        raise SchemaTooNew(
            f"the database is at schema revision {', '.join(unknown)}, which this gpufleet does not know "
            f"(it knows up to {head}): it was migrated by a newer gpufleet; run that version, or "
            f"restore a backup taken before the upgrade"
        )
    if len(heads) > 1:
        raise RuntimeError(f"the database has several schema heads {heads}; fix it with the alembic CLI")
    return SchemaStatus(current=heads[0] if heads else None, head=head)


def schema_status(engine: Engine) -> SchemaStatus:
    """Read the database's revision; raises SchemaTooNew if it is newer than this code."""
    script = ScriptDirectory.from_config(_alembic_config())
    with engine.connect() as conn:
        return _status(conn, script)


def migrate(engine: Engine) -> SchemaStatus:
    """Bring the database to the newest schema this code knows (idempotent), in one transaction."""
    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: the second waits here, then finds nothing to do.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        before = _status(conn, script)
        if before.up_to_date:
            return before
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        after = _status(conn, script)
    log.info("database migrated", extra={"fields": {"from": before.current, "to": after.current}})
    return after
