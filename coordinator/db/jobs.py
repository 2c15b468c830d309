"""Jobs: create, read, list, assignment, status and desired/observed state, acknowledgement.

Plain functions over a Connection; the caller owns the transaction (see repo.py for the rules).
"""
from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator import states
from gpufleet.coordinator.db.common import _JOB_ID, _non_negative, _now, _paged
from gpufleet.coordinator.db.events import record_event
from gpufleet.coordinator.db.models import get_model
from gpufleet.coordinator.db.rows import JobRow, Page
from gpufleet.coordinator.db.schema import (
    events,
    jobs,
)
from gpufleet.coordinator.db.tokens import get_owner
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType
from sqlalchemy import Connection

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound


def _job_values(
    *,
    job_id: str,
    root_id: str,
    attempt: int,
    model_uuid: str | None,
    job_type: JobType,
    spec: Mapping[str, Any],
    gpus: int,
    priority: int,
    constraints: Mapping[str, str],
    max_retries: int,
    retries_used: int,
    resume_on_retry: bool,
    name: str,
    at: datetime,
    lost_after_seconds: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "root_id": root_id,
        "model_uuid": model_uuid,
        "job_type": JobType(job_type).value,
        "attempt": attempt,
        "status": JobStatus.QUEUED.value,
        "desired_state": DesiredState.RUN.value,
        "observed_state": None,
        "observed_at": None,
        "exit_code": None,
        "error_message": "",
        "node": None,
        "gpu_indices": [],
        "gpus": gpus,
        "priority": priority,
        "spec": dict(spec),
        "constraints": dict(constraints),
        "max_retries": max_retries,
        "retries_used": retries_used,
        "resume_on_retry": resume_on_retry,
        "name": name,
        "superseded_by": None,
        "acked": False,
        "created_at": at,
        "assigned_at": None,
        "started_at": None,
        "finished_at": None,
        "row_version": 1,
        "node_unreachable_since": None,
        "lost_after_seconds": lost_after_seconds,
        "warnings": None,
        "owner": owner or None,
    }


def create_job(
    conn: Connection,
    *,
    spec: Mapping[str, Any],
    gpus: int = 1,
    priority: int = 0,
    constraints: Mapping[str, str] | None = None,
    max_retries: int = 0,
    resume_on_retry: bool = False,
    name: str = "",
    model_uuid: str | None = None,
    job_type: JobType = JobType.TRAIN,
    job_id: str | None = None,
    actor: str = "api",
    now: datetime | None = None,
    lost_after_seconds: int | None = None,
    owner: str | None = None,
) -> JobRow:
    """Insert attempt 1 of a new job, QUEUED. The id is 16 hex characters unless given.
    `owner`: who it belongs to (quotas, fair share); a model's jobs take the model's owner."""
    if job_id is not None and not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument("job_id", f"must match [A-Za-z0-9_-]{{1,48}}, got {job_id!r}")
    _non_negative("gpus", gpus)
    _non_negative("max_retries", max_retries)
    if lost_after_seconds is not None:
        _non_negative("lost_after_seconds", lost_after_seconds)
    if len(name) > 256:
        raise InvalidArgument("name", "must be at most 256 characters")
    if model_uuid is not None:
        get_model(conn, model_uuid)  # NotFound, rather than a foreign-key error from the insert
    at = _now(now)
    new_id = job_id or uuidlib.uuid4().hex[:16]
    row = _job_values(
        job_id=new_id,
        root_id=new_id,
        attempt=1,
        model_uuid=model_uuid,
        job_type=job_type,
        spec=spec,
        gpus=gpus,
        priority=priority,
        constraints=constraints or {},
        max_retries=max_retries,
        retries_used=0,
        resume_on_retry=resume_on_retry,
        name=name,
        at=at,
        lost_after_seconds=lost_after_seconds,
        owner=owner if owner is not None or model_uuid is None else get_owner(conn, "model", model_uuid),
    )
    conn.execute(sa.insert(jobs).values(row))
    record_event(conn, "job", new_id, None, JobStatus.QUEUED, reason="submitted", actor=actor, now=at)
    return JobRow.from_row(row)


def get_job(conn: Connection, job_id: str, *, for_update: bool = False) -> JobRow:
    """The job attempt, or NotFound (`for_update` as in get_model)."""
    query = sa.select(jobs).where(jobs.c.id == job_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return JobRow.from_row(row)


def list_jobs(
    conn: Connection,
    *,
    status: JobStatus | None = None,
    model_uuid: str | None = None,
    node: str | None = None,
    root_id: str | None = None,
    page: int = 0,
    size: int = 20,
) -> Page[JobRow]:
    """Job attempts newest first, filtered by any of status, model, node and root job."""
    where: list[sa.ColumnElement[bool]] = []
    if status is not None:
        where.append(jobs.c.status == JobStatus(status).value)
    if model_uuid:
        where.append(jobs.c.model_uuid == model_uuid)
    if node:
        where.append(jobs.c.node == node)
    if root_id:
        where.append(jobs.c.root_id == root_id)
    query = sa.select(jobs).where(*where).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
    count = sa.select(sa.func.count()).select_from(jobs).where(*where)
    rows, total, pages = _paged(conn, query, count, page, size)
    return Page([JobRow.from_row(r) for r in rows], total, pages, page, size)


def claim_queued(conn: Connection, limit: int, *, after: tuple[int, datetime, str] | None = None,
                 max_gpus: int | None = None, owner: str | None = None,
                 skip: Sequence[tuple[Mapping[str, str], int]] = ()) -> list[JobRow]:
    """Up to `limit` QUEUED jobs, highest priority first, then oldest.

    `after` (priority, created_at, id) of the last job of the previous batch continues the scan
    past it (keyset paging), so a scheduling pass can look at every queued job, not just the head;
    `max_gpus` leaves out jobs that need more GPUs than any node has free; `skip` (labels, most
    GPUs) leaves out jobs whose constraints include all those labels and that need more than that
    many GPUs (-1: any job with them), i.e. jobs no node matching those labels could take, so a
    large queue of them is never read, locked and judged again by every pass; `owner` keeps only
    that owner's jobs ("": jobs nobody owns), one stream of a fair-share pass.
    On PostgreSQL the rows stay locked (FOR UPDATE SKIP LOCKED) until the caller's transaction
    ends, so another replica claiming at the same time gets different jobs instead of waiting.
    On SQLite the transaction already holds the single writer lock (BEGIN IMMEDIATE).
    """
    if limit < 1:
        raise InvalidArgument("limit", f"must be >= 1, got {limit}")
    query = (
        sa.select(jobs)
        .where(jobs.c.status == JobStatus.QUEUED.value)
        .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
        .limit(limit)
    )
    if after is not None:
        prio, created, job_id = after
        query = query.where(sa.or_(
            jobs.c.priority < prio,
            sa.and_(jobs.c.priority == prio, sa.or_(
                jobs.c.created_at > created, sa.and_(jobs.c.created_at == created, jobs.c.id > job_id))),
        ))
    if max_gpus is not None:
        query = query.where(jobs.c.gpus <= max_gpus)
    if owner is not None:
        query = query.where(jobs.c.owner == owner if owner else jobs.c.owner.is_(None))
    for labels, most in skip:
        # IS NOT DISTINCT FROM: a job without the label compares false, never NULL (NOT NULL would
        # leave it out too).
        query = query.where(sa.not_(sa.and_(
            jobs.c.gpus > most,
            *(jobs.c.constraints[k].as_string().is_not_distinct_from(v) for k, v in sorted(labels.items())))))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [JobRow.from_row(r) for r in conn.execute(query).mappings()]


def assign_jobs(
    conn: Connection,
    assignments: Sequence[tuple[str, str, Sequence[int]]],
    *,
    actor: str = "scheduler",
    now: datetime | None = None,
) -> None:
    """Many QUEUED -> RUNNING assignments (job id, node, GPUs) in two statements.

    Only for jobs this transaction claimed with `claim_queued`: their rows are locked (FOR UPDATE
    SKIP LOCKED on PostgreSQL, the writer lock on SQLite), so every guarded update wins.
    """
    if not assignments:
        return
    states.check_job(JobStatus.QUEUED, JobStatus.RUNNING)
    at = _now(now)
    if conn.dialect.name == "postgresql":
        # Two statements over arrays, not 2 x N rows: each row of an executemany costs its own
        # parameter processing, JSON encoding and protocol message, which dominated a pass.
        ids = [j for j, _, _ in assignments]
        gpus = [json.dumps([int(i) for i in g]) for _, _, g in assignments]
        details = [json.dumps({"node": n, "gpu_indices": [int(i) for i in g]}) for _, n, g in assignments]
        conn.execute(_PG_ASSIGN, {"ids": ids, "nodes": [n for _, n, _ in assignments], "gpus": gpus, "at": at})
        conn.execute(_PG_ASSIGN_EVENTS, {"ids": ids, "details": details, "at": at, "actor": actor})
        return
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id == sa.bindparam("b_id"), jobs.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.RUNNING.value, node=sa.bindparam("b_node"),
                gpu_indices=sa.bindparam("b_gpus", type_=jobs.c.gpu_indices.type), assigned_at=at,
                row_version=jobs.c.row_version + 1)
    )
    conn.execute(stmt, [{"b_id": j, "b_node": n, "b_gpus": [int(i) for i in g]} for j, n, g in assignments])
    conn.execute(sa.insert(events), [
        {"at": at, "entity": "job", "entity_id": j, "from_state": JobStatus.QUEUED.value,
         "to_state": JobStatus.RUNNING.value, "reason": "assigned", "actor": actor,
         "detail": {"node": n, "gpu_indices": [int(i) for i in g]}}
        for j, n, g in assignments
    ])


_PG_ASSIGN = sa.text(
    "UPDATE jobs SET status = :running, node = v.node, gpu_indices = v.gpus, assigned_at = :at,"
    " row_version = jobs.row_version + 1"
    " FROM unnest(CAST(:ids AS text[]), CAST(:nodes AS text[]), CAST(:gpus AS jsonb[])) AS v(id, node, gpus)"
    " WHERE jobs.id = v.id AND jobs.status = :queued"
).bindparams(running=JobStatus.RUNNING.value, queued=JobStatus.QUEUED.value)
_PG_ASSIGN_EVENTS = sa.text(
    "INSERT INTO events (at, entity, entity_id, from_state, to_state, reason, actor, detail)"
    " SELECT :at, 'job', v.id, :queued, :running, 'assigned', :actor, v.detail"
    " FROM unnest(CAST(:ids AS text[]), CAST(:details AS jsonb[])) AS v(id, detail)"
).bindparams(running=JobStatus.RUNNING.value, queued=JobStatus.QUEUED.value)


def set_observed_many(conn: Connection, job_ids: Sequence[str], observed: str, at: datetime) -> None:
    """`set_observed_state` for many jobs in one statement (the agents' Launch answers)."""
    if not job_ids:
        return
    values: dict[str, Any] = {"observed_state": observed, "observed_at": at}
    if observed == "RUNNING":
        values["started_at"] = sa.func.coalesce(jobs.c.started_at, at)
    conn.execute(sa.update(jobs).where(jobs.c.id.in_(list(job_ids)), jobs.c.status == JobStatus.RUNNING.value)
                 .values(values))


@dataclass(frozen=True, slots=True)
class JobBrief:
    """The few columns a heartbeat needs per digest."""

    id: str
    status: JobStatus
    node: str | None
    attempt: int
    acked: bool
    # Given up for lost (STOPPED NODE_LOST after lost_after): the node's own report still counts.
    lost_verdict: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in states.JOB_TERMINAL


def job_briefs(conn: Connection, job_ids: Sequence[str]) -> dict[str, JobBrief]:
    """id -> brief for the given ids that exist, in one query."""
    if not job_ids:
        return {}
    rows = conn.execute(_JOB_BRIEFS, {"b_ids": list(job_ids)})
    out = {}
    for r in rows:
        status = JobStatus(r.status)
        out[r.id] = JobBrief(r.id, status, r.node, r.attempt, bool(r.acked),
                             states.is_lost_verdict(status, r.error_message or ""))
    return out


_JOB_BRIEFS = sa.select(jobs.c.id, jobs.c.status, jobs.c.node, jobs.c.attempt, jobs.c.acked,
                        sa.func.substr(jobs.c.error_message, 1, 64).label("error_message")).where(
    jobs.c.id.in_(sa.bindparam("b_ids", expanding=True)))


def set_job_status(
    conn: Connection,
    job_id: str,
    to: JobStatus,
    *,
    exit_code: int | None = None,
    error_message: str | None = None,
    reason: str = "",
    actor: str,
    expect_version: int | None = None,
    now: datetime | None = None,
    late_truth: bool = False,
) -> bool:
    """Move a placed job to a final status (RUNNING -> SUCCESS/FAILED/STOPPED, QUEUED ->
    CANCELED/FAILED), checked by the state machine, with exit code and error message.

    The exit code follows the status (states.exit_code_for: SUCCESS 0, STOPPED -1 by default; a
    contradicting code is refused). A repeat of the current status is a no-op that keeps the
    first exit code and message (False). QUEUED -> RUNNING goes through assign_jobs.
    """
    to = JobStatus(to)
    cur = get_job(conn, job_id)
    if expect_version is not None and cur.row_version != expect_version:
        return False
    if late_truth:
        # The one move out of a terminal status (states.LATE_TRUTH): a lost verdict replaced by
        # what the returning node reports.
        if (cur.status, to) not in states.LATE_TRUTH or not states.is_lost_verdict(cur.status, cur.error_message):
            raise states.InvalidTransition("job", job_id, cur.status.value, to.value)
    elif not states.check_job(cur.status, to, job_id):
        return False
    if to is JobStatus.RUNNING:
        raise ValueError("QUEUED -> RUNNING needs a node: use assign_jobs")
    at = _now(now)
    values: dict[str, Any] = {
        "status": to.value,
        "exit_code": states.exit_code_for(to, exit_code, job_id),
        "finished_at": at,
        "row_version": jobs.c.row_version + 1,
    }
    if error_message is not None:
        values["error_message"] = error_message
    result = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == cur.status.value, jobs.c.row_version == cur.row_version)
        .values(values)
    )
    if result.rowcount != 1:
        return False
    detail = {"exit_code": values["exit_code"]}
    if error_message:
        detail["error_message"] = error_message
    record_event(
        conn, "job", job_id, cur.status, to, reason=reason or error_message or to.value, actor=actor,
        detail=detail, now=at,
    )
    return True


def requeue_job(
    conn: Connection,
    job_id: str,
    *,
    reason: str,
    actor: str,
    count_retry: bool = True,
    spec: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> JobRow | None:
    """A new QUEUED attempt of an ended job: attempt + 1, same root_id, id "<root>.<attempt>";
    the old row's superseded_by names it.

    `count_retry` (node loss, launch failure) consumes one of the job's retries and is refused
    once `max_retries` are used; user restarts pass False. `spec` replaces the old spec (resume).
    Returns None when the attempt was already superseded (another replica requeued it first).
    """
    old = get_job(conn, job_id)
    if not old.terminal:
        raise FailedPrecondition(f"job {job_id} is {old.status}: only an ended attempt can be requeued")
    if old.superseded_by is not None:
        return None
    if count_retry and not old.can_retry:
        raise FailedPrecondition(f"job {job_id}: retry limit reached ({old.retries_used}/{old.max_retries})")
    at = _now(now)
    attempt = old.attempt + 1
    new_id = f"{old.root_id}.{attempt}"
    won = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.superseded_by.is_(None), jobs.c.row_version == old.row_version)
        .values(superseded_by=new_id, row_version=jobs.c.row_version + 1)
    )
    if won.rowcount != 1:
        return None
    row = _job_values(
        job_id=new_id,
        root_id=old.root_id,
        attempt=attempt,
        model_uuid=old.model_uuid,
        job_type=old.job_type,
        spec=old.spec if spec is None else spec,
        gpus=old.gpus,
        priority=old.priority,
        constraints=old.constraints,
        max_retries=old.max_retries,
        retries_used=old.retries_used + (1 if count_retry else 0),
        resume_on_retry=old.resume_on_retry,
        name=old.name,
        at=at,
        lost_after_seconds=old.lost_after_seconds,
        owner=old.owner,
    )
    conn.execute(sa.insert(jobs).values(row))
    record_event(
        conn, "job", job_id, old.status, old.status, reason=f"superseded by {new_id}: {reason}", actor=actor,
        detail={"superseded_by": new_id}, now=at,
    )
    record_event(
        conn, "job", new_id, None, JobStatus.QUEUED, reason=f"attempt {attempt} of {old.root_id}: {reason}",
        actor=actor, detail={"previous": job_id, "count_retry": count_retry}, now=at,
    )
    return JobRow.from_row(row)


def set_desired_state(
    conn: Connection,
    job_id: str,
    desired: DesiredState,
    *,
    reason: str,
    actor: str,
    now: datetime | None = None,
    message: str | None = None,
) -> bool:
    """Record what the coordinator wants for a job (RUN/STOP); the reconciler acts on it.
    `message`: the error_message the job will end with when the stop is not the user's."""
    desired = DesiredState(desired)
    cur = get_job(conn, job_id)
    if cur.desired_state is desired:
        return False
    at = _now(now)
    values: dict[str, Any] = {"desired_state": desired.value, "row_version": jobs.c.row_version + 1}
    if message is not None:
        values["error_message"] = message
    result = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.desired_state == cur.desired_state.value)
        .values(values)
    )
    if result.rowcount != 1:
        return False
    record_event(
        conn, "job", job_id, cur.desired_state, desired, reason=reason, actor=actor,
        detail={"field": "desired_state"}, now=at,
    )
    return True


def _set_observed(running: bool) -> Any:
    # Built once: the reconciler runs this per job, and building plus cache-keying a statement each
    # time costs more than the round trip on a busy coordinator.
    observed = sa.bindparam("b_observed", type_=jobs.c.observed_state.type)
    at = sa.bindparam("b_at", type_=jobs.c.observed_at.type)
    values: dict[str, Any] = {"observed_state": observed, "observed_at": at}
    if running:
        values["started_at"] = sa.func.coalesce(jobs.c.started_at, at)
    return (
        sa.update(jobs)
        .where(jobs.c.id == sa.bindparam("b_id"), jobs.c.status == JobStatus.RUNNING.value,
               jobs.c.observed_state.is_distinct_from(observed))
        .values(values)
    )


_SET_OBSERVED = {True: _set_observed(True), False: _set_observed(False)}


def set_observed_state(conn: Connection, job_id: str, observed: str, at: datetime) -> bool:
    """Store the agent's last report of a job (an AgentJobState name), and the first time it was
    seen RUNNING as started_at. Not a transition of ours, so no event; writes only on change."""
    result = conn.execute(_SET_OBSERVED[observed == "RUNNING"], {"b_id": job_id, "b_observed": observed, "b_at": at})
    return result.rowcount == 1


MAX_WARNINGS_CHARS = 4096


def add_job_warnings(conn: Connection, job_id: str, lines: Sequence[str]) -> None:
    """Append what was dropped from a job's reports (one line each, bounded; a repeat is not
    added twice)."""
    cur = conn.execute(sa.select(jobs.c.warnings).where(jobs.c.id == job_id)).scalar() or ""
    have = cur.splitlines()
    new = [ln for ln in lines if ln not in have]
    if not new:
        return
    text = "\n".join(have + new)[:MAX_WARNINGS_CHARS]
    conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(warnings=text))


def mark_acked(conn: Connection, job_ids: Iterable[str]) -> int:
    """Note that agents were told these final states are stored; returns how many changed."""
    ids = list(job_ids)
    if not ids:
        return 0
    result = conn.execute(
        sa.update(jobs)
        .where(
            jobs.c.id.in_(ids),
            jobs.c.status.in_([s.value for s in states.JOB_TERMINAL]),
            jobs.c.acked.is_(False),
        )
        .values(acked=True)
    )
    return int(result.rowcount)


def jobs_on_node(
    conn: Connection, node: str, statuses: Iterable[JobStatus] = (JobStatus.RUNNING,)
) -> list[JobRow]:
    wanted = [JobStatus(s).value for s in statuses]
    query = sa.select(jobs).where(jobs.c.node == node, jobs.c.status.in_(wanted))
    return [JobRow.from_row(r) for r in conn.execute(query.order_by(jobs.c.id)).mappings()]


def running_jobs(conn: Connection) -> list[JobRow]:
    query = sa.select(jobs).where(jobs.c.status == JobStatus.RUNNING.value).order_by(jobs.c.id)
    return [JobRow.from_row(r) for r in conn.execute(query).mappings()]


_RUNNING_PLACED = (jobs.c.status == JobStatus.RUNNING.value, jobs.c.node.is_not(None))
_GPUS_IN_USE = sa.select(jobs.c.node, jobs.c.gpu_indices).where(*_RUNNING_PLACED)
# PostgreSQL folds the rows into one JSON array per node: a scheduling pass reads ~100 rows, not one
# per running job (thousands), and decodes each node's lists in one C-level json.loads.
_PG_GPUS_IN_USE = (
    sa.select(jobs.c.node, sa.func.jsonb_agg(jobs.c.gpu_indices).label("held"))
    .where(*_RUNNING_PLACED)
    .group_by(jobs.c.node)
)


def gpus_in_use(conn: Connection) -> dict[str, set[int]]:
    """GPU indices held by RUNNING jobs (assigned included), per node."""
    used: dict[str, set[int]] = {}
    if conn.dialect.name == "postgresql":
        for node, held in conn.execute(_PG_GPUS_IN_USE):
            used[node] = {int(i) for indices in held for i in indices or ()}
        return used
    for node, indices in conn.execute(_GPUS_IN_USE):
        used.setdefault(node, set()).update(int(i) for i in indices or ())
    return used
