"""Per-attempt GPU use (issue 15, migration 0022): one table on the coordinator's MetaData.

    job_gpu_usage   job_id PK -> jobs, owner (token name at the end; "" without tokens), node,
                    gpus, finished_at, gpu_seconds, energy_joules, peak_memory_bytes,
                    mean_utilization, samples

One row per ended attempt whose agent reported its use; written once (the first report stands:
a repeated or late report changes nothing), never updated. The owner and end time are copied in so
that `gpufleet usage` and the per-user counters sum one indexed table without joins, and keep
their numbers whatever later happens to ownership records.

Plain functions over a Connection; the caller owns the transaction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db.schema import ID_LEN, NODE_LEN, UtcDateTime, metadata
from sqlalchemy import Connection

OWNER_LEN = 128

job_gpu_usage = sa.Table(
    "job_gpu_usage",
    metadata,
    sa.Column("job_id", sa.String(ID_LEN), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("owner", sa.String(OWNER_LEN), nullable=False),
    sa.Column("node", sa.String(NODE_LEN), nullable=False),
    sa.Column("gpus", sa.Integer(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=False),
    sa.Column("gpu_seconds", sa.Double(), nullable=False),
    sa.Column("energy_joules", sa.Double(), nullable=False),
    sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=False),
    sa.Column("mean_utilization", sa.Double(), nullable=False),
    sa.Column("samples", sa.Integer(), nullable=False),
    sa.Index("ix_job_gpu_usage_finished", "finished_at"),
    sa.Index("ix_job_gpu_usage_owner", "owner"),
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    job_id: str
    owner: str
    node: str
    gpus: int
    finished_at: datetime
    gpu_seconds: float
    energy_joules: float
    peak_memory_bytes: int
    mean_utilization: float
    samples: int


@dataclass(frozen=True, slots=True)
class UsageSum:
    key: str
    jobs: int
    gpu_seconds: float
    energy_joules: float
    peak_memory_bytes: int
    # Weighted by GPU-seconds: a long job's utilisation counts more than a short one's.
    mean_utilization: float


def insert_usage(conn: Connection, row: UsageRow) -> bool:
    """Store the row unless the attempt has one already; True when stored."""
    exists = conn.execute(sa.select(job_gpu_usage.c.job_id).where(job_gpu_usage.c.job_id == row.job_id)).first()
    if exists is not None:
        return False
    conn.execute(job_gpu_usage.insert().values(**{f.name: getattr(row, f.name) for f in fields(UsageRow)}))
    return True


def get_usage(conn: Connection, job_ids: Sequence[str]) -> dict[str, UsageRow]:
    if not job_ids:
        return {}
    rows = conn.execute(sa.select(job_gpu_usage).where(job_gpu_usage.c.job_id.in_(sorted(set(job_ids)))))
    return {r.job_id: UsageRow(*(getattr(r, f.name) for f in fields(UsageRow))) for r in rows}


GROUPS = {"user": job_gpu_usage.c.owner, "node": job_gpu_usage.c.node, "all": None}


def sum_usage(conn: Connection, by: str, since: datetime | None) -> list[UsageSum]:
    """Sums per `by` (user | node | all) of the attempts that ended at or after `since`."""
    column = GROUPS[by]
    u = job_gpu_usage.c
    key: Any = column if column is not None else sa.literal_column("'all'")
    q: Any = sa.select(key.label("key"), sa.func.count(), sa.func.coalesce(sa.func.sum(u.gpu_seconds), 0.0),
                       sa.func.coalesce(sa.func.sum(u.energy_joules), 0.0),
                       sa.func.coalesce(sa.func.max(u.peak_memory_bytes), 0),
                       sa.func.coalesce(sa.func.sum(u.mean_utilization * u.gpu_seconds), 0.0))
    if since is not None:
        q = q.where(u.finished_at >= since)
    if column is not None:
        q = q.group_by(column)
    out = []
    for r in conn.execute(q):
        n, secs, energy, peak, util_secs = int(r[1]), float(r[2]), float(r[3]), int(r[4]), float(r[5])
        if n:
            out.append(UsageSum(str(r[0]), n, secs, energy, peak, util_secs / secs if secs > 0 else 0.0))
    return out
