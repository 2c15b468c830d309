"""The coordinator's database layer: schema (Core tables), engine + migrations, repository.

Layering: service/scheduler/reconciler -> repo (plain functions over a Connection; the caller
owns the transaction) -> schema. Nothing here imports protobuf.
"""
from gpufleet.coordinator.db import quotas as _quotas  # noqa: F401 - its table joins schema.metadata
from gpufleet.coordinator.db import tokens as _tokens  # noqa: F401 - its tables join schema.metadata
from gpufleet.coordinator.db import usage as _usage  # noqa: F401 - its table joins schema.metadata
from gpufleet.coordinator.db.engine import SchemaTooNew, default_sqlite_url, make_engine, migrate, schema_status

__all__ = ["SchemaTooNew", "default_sqlite_url", "make_engine", "migrate", "schema_status"]
