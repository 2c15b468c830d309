"""Per-owner GPU quotas and what fair share reads: one table on the coordinator's MetaData
(migration 0021) and the reads the scheduler makes per pass.

    quotas   owner PK (a token's name, as the owners table records it), gpus (at most this many
             GPUs held at once by the owner's RUNNING jobs), updated_at, updated_by.

A job's owner (jobs.owner) is its model's owner, else its submitter's token name, fixed when the job
is made; jobs with no owner (auth off, or made before tokens) belong to "" and have no quota.
Plain functions over a Connection; the caller owns the transaction.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from gpufleet.coordinator.db.schema import UtcDateTime, jobs, metadata
from gpufleet.coordinator.db.tokens import NAME_LEN, owners
from gpufleet.coordinator.states import JobStatus
from sqlalchemy import Connection

quotas = sa.Table(
    "quotas",
    metadata,
    sa.Column("owner", sa.String(NAME_LEN), primary_key=True),
    sa.Column("gpus", sa.Integer(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(NAME_LEN), nullable=False),
    sa.CheckConstraint("gpus >= 0", name="gpus"),
)


@dataclass(frozen=True, slots=True)
class Quota:
    owner: str
    gpus: int
    updated_at: datetime
    updated_by: str


def set_quota(conn: Connection, owner: str, gpus: int, *, actor: str, now: datetime) -> Quota:
    """Insert or replace `owner`'s quota."""
    values = {"gpus": gpus, "updated_at": now, "updated_by": actor}
    if not conn.execute(sa.update(quotas).where(quotas.c.owner == owner).values(values)).rowcount:
        conn.execute(sa.insert(quotas).values(owner=owner, **values))
    return Quota(owner, gpus, now, actor)


def delete_quota(conn: Connection, owner: str) -> bool:
    return bool(conn.execute(sa.delete(quotas).where(quotas.c.owner == owner)).rowcount)


def list_quotas(conn: Connection) -> list[Quota]:
    rows = conn.execute(sa.select(quotas).order_by(quotas.c.owner))
    return [Quota(r.owner, r.gpus, r.updated_at, r.updated_by) for r in rows]


def quota_map(conn: Connection) -> dict[str, int]:
    return {r.owner: r.gpus for r in conn.execute(sa.select(quotas.c.owner, quotas.c.gpus))}


# The owner of a job row, "" for nobody (jobs.owner is fixed when the job is made).
OWNER = sa.func.coalesce(jobs.c.owner, "")


def any_owner(conn: Connection) -> bool:
    """Whether any entity has an owner (tokens are or were on): without owners, no quota or fair
    share can apply and the scheduler reads the queue as one stream."""
    return conn.execute(sa.select(owners.c.owner).limit(1)).first() is not None


def queued_owners(conn: Connection) -> list[str]:
    """The distinct owners of QUEUED jobs."""
    q = sa.select(OWNER).where(jobs.c.status == JobStatus.QUEUED.value).distinct()
    return sorted(str(o) for o in conn.execute(q).scalars())


def owners_of(conn: Connection, job_ids: Iterable[str]) -> dict[str, str]:
    """job id -> owner ("" when none is recorded)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    q = sa.select(jobs.c.id, OWNER.label("owner")).where(jobs.c.id.in_(ids))
    return {r.id: r.owner for r in conn.execute(q)}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One job attempt's GPU time, as fair share needs it."""

    owner: str
    gpus: int
    start: datetime
    end: datetime | None  # None: still running


def usage_rows(conn: Connection, since: datetime) -> list[UsageRow]:
    """GPU-holding attempts that ran at any time after `since` (RUNNING, or finished after it)."""
    start = sa.func.coalesce(jobs.c.started_at, jobs.c.assigned_at)
    q = (sa.select(OWNER.label("owner"), jobs.c.gpus, start.label("start"), jobs.c.finished_at,
                   jobs.c.status)
         .where(jobs.c.gpus > 0, start.is_not(None),
                sa.or_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.finished_at > since)))
    return [UsageRow(r.owner, int(r.gpus), r.start, None if r.status == JobStatus.RUNNING.value else r.finished_at)
            for r in conn.execute(q)]


def held_gpus(conn: Connection) -> dict[str, int]:
    """owner -> GPUs its RUNNING jobs hold now (assigned included)."""
    q = (sa.select(OWNER.label("owner"), sa.func.sum(jobs.c.gpus).label("held"))
         .where(jobs.c.status == JobStatus.RUNNING.value).group_by(OWNER))
    return {r.owner: int(r.held or 0) for r in conn.execute(q)}
