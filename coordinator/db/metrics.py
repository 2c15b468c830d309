"""Metric rows, stored progress, dataset counts and log tails of jobs.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db.common import _ROWCOUNT, _insert, _non_negative, _now
from gpufleet.coordinator.db.rows import MetricPoint, Progress
from gpufleet.coordinator.db.schema import (
    METRIC_KEY_LEN,
    METRIC_TABLES,
    dataset_stages,
    job_logs,
    job_progress,
    jobs,
)
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from gpufleet.errors import InvalidArgument, NotFound


def _metric_rows(
    split: str, job_id: str, rows: Iterable[tuple[int, Mapping[str, float]]]
) -> list[tuple[int, str, float]]:
    """Validate everything before anything is written; non-finite values are left out like the
    agent leaves out non-numeric cells (SQLite cannot store NaN, and no chart can draw it)."""
    out: list[tuple[int, str, float]] = []
    for epoch, values in rows:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InvalidArgument(f"metrics.{split}.epoch", f"must be an integer >= 0, got {epoch!r}")
        for key, value in values.items():
            if not isinstance(key, str) or not 1 <= len(key) <= METRIC_KEY_LEN or not key.isprintable():
                raise InvalidArgument(
                    f"metrics.{split}.key", f"{key!r} must be 1..{METRIC_KEY_LEN} printable characters"
                )
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InvalidArgument(f"metrics.{split}.{key}", f"must be a number, got {value!r}") from None
            if math.isfinite(number):
                out.append((epoch, key, number))
    return out


def ingest_metrics(
    conn: Connection,
    split: str,
    model_uuid: str | None,
    job_id: str,
    rows: Iterable[tuple[int, Mapping[str, float]]],
) -> int:
    """Store (epoch, {key: value}) rows of one split ('train', 'val', 'test') of a job; returns the
    rows inserted. Idempotent: a (job, epoch, key) already stored is skipped (ON CONFLICT DO
    NOTHING), so a repeated report inserts 0. One batched statement; nothing is written when any
    key or epoch is invalid."""
    table = METRIC_TABLES.get(split)
    if table is None:
        raise InvalidArgument("split", f"must be one of {', '.join(METRIC_TABLES)}, got {split!r}")
    batch = _metric_rows(split, job_id, rows)
    # Once per batch, in place of per-row foreign keys (see schema._metrics_table).
    owner = conn.execute(sa.select(jobs.c.model_uuid).where(jobs.c.id == job_id)).first()
    if owner is None:
        raise NotFound(f"job {job_id} not found")
    if owner.model_uuid != model_uuid:
        rule = f"job {job_id} belongs to model {owner.model_uuid}, not {model_uuid}"
        raise InvalidArgument("model_uuid", rule)
    if not batch:
        return 0
    if conn.dialect.name == "postgresql":
        # One statement over three arrays: compiled once, no per-row parameter handling, and an
        # exact rowcount (psycopg's executemany reports -1).
        epochs, keys, values = zip(*batch, strict=True)
        params = {"model_uuid": model_uuid, "job_id": job_id, "epochs": list(epochs), "keys": list(keys),
                  "values": list(values)}
        return int(conn.execute(_PG_METRIC_INSERTS[split], params, execution_options=_ROWCOUNT).rowcount)
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["job_id", "epoch", "key"])
    params_list = [{"model_uuid": model_uuid, "job_id": job_id, "epoch": e, "key": k, "value": v}
                   for e, k, v in batch]
    return int(conn.execute(stmt, params_list, execution_options=_ROWCOUNT).rowcount)


def _pg_metric_insert(table: sa.Table) -> Any:
    rows = sa.func.unnest(
        sa.bindparam("epochs", type_=postgresql.ARRAY(sa.Integer())),
        sa.bindparam("keys", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("values", type_=postgresql.ARRAY(sa.Double())),
    ).table_valued("epoch", "key", "value").render_derived(name="m")
    select = sa.select(
        sa.bindparam("model_uuid", type_=sa.String()),
        sa.bindparam("job_id", type_=sa.String()),
        rows.c.epoch,
        rows.c.key,
        rows.c.value,
    )
    return (
        postgresql.insert(table)
        .from_select(["model_uuid", "job_id", "epoch", "key", "value"], select)
        .on_conflict_do_nothing(index_elements=["job_id", "epoch", "key"])
    )


_PG_METRIC_INSERTS = {split: _pg_metric_insert(table) for split, table in METRIC_TABLES.items()}


def get_job_metrics(conn: Connection, job_id: str) -> list[MetricPoint]:
    """All metric rows of a job attempt: train, then val, then test, each by epoch."""
    parts = [
        sa.select(sa.literal(i).label("split_no"), t.c.epoch, t.c.key, t.c.value).where(t.c.job_id == job_id)
        for i, t in enumerate(METRIC_TABLES.values())
    ]
    union = sa.union_all(*parts).subquery()
    query = sa.select(union).order_by(union.c.split_no, union.c.epoch, union.c.key)
    names = list(METRIC_TABLES)
    points: list[MetricPoint] = []
    for split_no, epoch, key, value in conn.execute(query):
        split = names[split_no]
        if not points or points[-1].split != split or points[-1].epoch != epoch:
            points.append(MetricPoint(split, epoch, {}))
        points[-1].values[key] = value
    return points


def upsert_progress(
    conn: Connection,
    job_id: str,
    current_epoch: int,
    total_epoch: int,
    metrics: Mapping[str, Any],
    now: datetime | None = None,
) -> None:
    """Live progress of a running job (one row per job, overwritten). Only moves forward: a
    report of an earlier epoch (a late or replayed one) changes nothing."""
    values = {"current_epoch": current_epoch, "total_epoch": total_epoch, "metrics": dict(metrics),
              "updated_at": _now(now)}
    stmt = _insert(conn, job_progress).values(job_id=job_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["job_id"], set_=values,
                                            where=job_progress.c.current_epoch <= stmt.excluded.current_epoch))


def get_progress(conn: Connection, job_ids: Iterable[str | None]) -> dict[str, Progress]:
    """Progress rows of these jobs (None ids, e.g. a model without an attempt, are skipped)."""
    ids = [i for i in job_ids if i is not None]
    if not ids:
        return {}
    query = sa.select(job_progress).where(job_progress.c.job_id.in_(ids))
    return {r["job_id"]: Progress.from_row(r) for r in conn.execute(query).mappings()}


def set_dataset_counts(
    conn: Connection, uuid: str, counts: Mapping[str, int], node: str, now: datetime | None = None
) -> None:
    """Record files staged per split/part for a model; parts not named keep their earlier counts."""
    at = _now(now)
    for part, count in counts.items():
        if not part or len(part) > 64:
            raise InvalidArgument("split_part", f"must be 1..64 characters, got {part!r}")
        _non_negative(f"counts[{part}]", count)
    for part, count in counts.items():
        values = {"count": count, "node": node, "staged_at": at}
        conn.execute(
            _insert(conn, dataset_stages)
            .values(uuid=uuid, split_part=part, **values)
            .on_conflict_do_update(index_elements=["uuid", "split_part"], set_=values)
        )


def get_dataset_counts(conn: Connection, uuid: str) -> dict[str, int]:
    t = dataset_stages
    query = sa.select(t.c.split_part, t.c.count).where(t.c.uuid == uuid).order_by(t.c.split_part)
    return {part: count for part, count in conn.execute(query)}


# ---------------------------------------------------------------------------------------------
# Log tails


def save_log_tail(conn: Connection, job_id: str, data: bytes, now: datetime | None = None) -> None:
    """Store an ended attempt's last output (the first stored tail wins: it is final)."""
    conn.execute(
        _insert(conn, job_logs).values(job_id=job_id, data=data, stored_at=_now(now))
        .on_conflict_do_nothing(index_elements=["job_id"])
    )


def get_log_tail(conn: Connection, job_id: str) -> bytes | None:
    row = conn.execute(sa.select(job_logs.c.data).where(job_logs.c.job_id == job_id)).first()
    return None if row is None else bytes(row[0])
