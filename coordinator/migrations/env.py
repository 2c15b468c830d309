"""Alembic environment, configured programmatically by coordinator.db.engine.migrate.

migrate() hands over an open Connection (in `config.attributes["connection"]`) that is already
inside a transaction holding the migration lock, so every migration runs in that one transaction.
The `alembic` command line works too when `sqlalchemy.url` is set, for developers who write a new
revision with `alembic revision --autogenerate`.
"""
from __future__ import annotations

from alembic import context
from gpufleet.coordinator.db.engine import make_engine
from gpufleet.coordinator.db.schema import metadata
from sqlalchemy import Connection

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or run migrations through coordinator.db.engine.migrate")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
