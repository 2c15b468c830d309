"""The coordinator's database operations: plain functions over a Connection.

The caller owns the transaction (`with engine.begin() as conn:`) and makes no agent RPC inside it.
Rules every function here keeps:
- Every status write is validated by coordinator.states (check_*) and writes an `events` row in
  the same transaction; a refused move raises InvalidTransition and changes nothing.
- Writers that can race another replica are guarded (`WHERE ... AND status = :expected` or
  `AND row_version = :v`) and return True when they changed the row, False when they changed
  nothing: an allowed no-op (already in that state; the first reason is kept) or a lost race.
  A caller that must tell the two apart reads the row again.
- Core statements only, parameterised; batched where the volume is (metrics).
- Time comes from the `now` argument (injected clock), defaulting to the wall clock in UTC.
"""
from __future__ import annotations

import json
import math
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator import states
from gpufleet.coordinator.db.rows import EventRow, JobRow, MetricPoint, ModelRow, NodeRow, Page, Progress
from gpufleet.coordinator.db.schema import (
    METRIC_KEY_LEN,
    METRIC_TABLES,
    dataset_stages,
    events,
    job_logs,
    job_progress,
    jobs,
    models,
    nodes,
    submit_keys,
)
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType, ModelStates, ModelStatus, NodeState, Step
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_PAGE_SIZE = 500
# SQLAlchemy reads an INSERT's rowcount only when asked to.
_ROWCOUNT = {"preserve_rowcount": True}
_MODEL_NO = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Dots are reserved: attempt n >= 2 of job R is "R.n".
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing/do_update."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _page_bounds(page: int, size: int) -> None:
    if page < 0:
        raise InvalidArgument("page", f"must be >= 0, got {page}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument("size", f"must be 1..{MAX_PAGE_SIZE}, got {size}")


def _paged(conn: Connection, query: sa.Select[Any], count: sa.Select[Any], page: int, size: int) -> tuple[
    list[Any], int, int
]:
    _page_bounds(page, size)
    total = int(conn.execute(count).scalar_one())
    rows = conn.execute(query.limit(size).offset(page * size)).mappings().all()
    return list(rows), total, (total + size - 1) // size


def _non_negative(field: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must be >= 0, got {value}")


# ---------------------------------------------------------------------------------------------
# Events


def record_event(
    conn: Connection,
    entity: str,
    entity_id: str,
    from_state: str | None,
    to_state: str | None,
    *,
    reason: str,
    actor: str,
    detail: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Append one audit row: who (`actor`) moved what from where to where, and why."""
    conn.execute(
        sa.insert(events).values(
            at=_now(now),
            entity=entity,
            entity_id=entity_id,
            from_state=None if from_state is None else str(from_state),
            to_state=None if to_state is None else str(to_state),
            reason=reason,
            actor=actor,
            detail=dict(detail) if detail is not None else None,
        )
    )


def list_events(
    conn: Connection, entity: str | None = None, entity_id: str | None = None, limit: int = 1000
) -> list[EventRow]:
    """Events oldest first, optionally for one entity."""
    query = sa.select(events).order_by(events.c.id).limit(limit)
    if entity is not None:
        query = query.where(events.c.entity == entity)
    if entity_id is not None:
        query = query.where(events.c.entity_id == entity_id)
    return [EventRow.from_row(r) for r in conn.execute(query).mappings()]


# ---------------------------------------------------------------------------------------------
# Models


def create_model(
    conn: Connection,
    *,
    model_no: str,
    version: str = "",
    train_type: str = "",
    memo: str = "",
    params_json: str = "{}",
    spec: Mapping[str, Any] | None = None,
    gpus: int = 1,
    priority: int = 0,
    constraints: Mapping[str, str] | None = None,
    max_retries: int = 0,
    uuid: str | None = None,
    actor: str = "api",
    now: datetime | None = None,
) -> ModelRow:
    """Insert a READY model; validates model_no, params_json (a JSON object) and the counts."""
    if not _MODEL_NO.fullmatch(model_no):
        raise InvalidArgument("model_no", f"must match [A-Za-z0-9_-]{{1,32}}, got {model_no!r}")
    for field, value in (("version", version), ("train_type", train_type)):
        if len(value) > 64:
            raise InvalidArgument(field, "must be at most 64 characters")
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidArgument("params_json", f"is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(params, dict):
        raise InvalidArgument("params_json", "must be a JSON object")
    _non_negative("gpus", gpus)
    _non_negative("max_retries", max_retries)
    at = _now(now)
    model_uuid = uuid or str(uuidlib.uuid4())
    row = {
        "uuid": model_uuid,
        "model_no": model_no,
        "version": version,
        "train_type": train_type,
        "memo": memo,
        "params_json": params_json or "{}",
        "spec": dict(spec or {}),
        "gpus": gpus,
        "priority": priority,
        "constraints": dict(constraints or {}),
        "max_retries": max_retries,
        "status": ModelStatus.READY.value,
        "step1_state": ModelStatus.READY.value,
        "step2_state": ModelStatus.READY.value,
        "step1_started_at": None,
        "step1_finished_at": None,
        "step2_started_at": None,
        "step2_finished_at": None,
        "step1_metric_saved": False,
        "step2_metric_saved": False,
        "current_attempt_id": None,
        "best_epoch": None,
        "test_epoch": None,
        "last_error": "",
        "created_at": at,
        "updated_at": at,
        "row_version": 1,
    }
    conn.execute(sa.insert(models).values(row))
    record_event(conn, "model", model_uuid, None, ModelStatus.READY, reason="created", actor=actor, now=at)
    return ModelRow.from_row(row)


def get_model(conn: Connection, uuid: str, *, for_update: bool = False) -> ModelRow:
    """The model, or NotFound. `for_update` locks the row on PostgreSQL until the transaction ends,
    so a read-check-write (an action) waits for a concurrent one instead of losing to it."""
    query = sa.select(models).where(models.c.uuid == uuid)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"model {uuid} not found")
    return ModelRow.from_row(row)


def list_models(
    conn: Connection,
    *,
    status: ModelStatus | None = None,
    model_no: str | None = None,
    page: int = 0,
    size: int = 20,
) -> Page[ModelRow]:
    """Models newest first, filtered by status and/or model_no."""
    where: list[sa.ColumnElement[bool]] = []
    if status is not None:
        where.append(models.c.status == ModelStatus(status).value)
    if model_no:
        where.append(models.c.model_no == model_no)
    query = sa.select(models).where(*where).order_by(models.c.created_at.desc(), models.c.uuid.desc())
    count = sa.select(sa.func.count()).select_from(models).where(*where)
    rows, total, pages = _paged(conn, query, count, page, size)
    return Page([ModelRow.from_row(r) for r in rows], total, pages, page, size)


# Columns update_model_states may set besides the three states.
MODEL_FIELDS = frozenset(
    {
        "step1_started_at",
        "step1_finished_at",
        "step2_started_at",
        "step2_finished_at",
        "step1_metric_saved",
        "step2_metric_saved",
        "current_attempt_id",
        "best_epoch",
        "test_epoch",
        "last_error",
        "params_json",
    }
)


def _step_stamps(step: Step, new: ModelStatus, at: datetime) -> dict[str, Any]:
    """Times and flags that follow from a step's move (explicit fields override them):
    entering IN_PROGRESS starts the clock afresh and clears the metric flag, entering COMPLETED,
    STOPPED or ERROR stops it (READY -> COMPLETED too: the zip shortcut has an end time but no
    start), and READY clears everything."""
    n = step.value
    if new is ModelStatus.IN_PROGRESS:
        return {f"step{n}_started_at": at, f"step{n}_finished_at": None, f"step{n}_metric_saved": False}
    if new is ModelStatus.READY:
        return {f"step{n}_started_at": None, f"step{n}_finished_at": None, f"step{n}_metric_saved": False}
    return {f"step{n}_finished_at": at}


def update_model_states(
    conn: Connection,
    uuid: str,
    *,
    new: ModelStates | None = None,
    expect_version: int | None = None,
    reason: str,
    actor: str,
    now: datetime | None = None,
    **fields: Any,
) -> bool:
    """Move a model's status/step1/step2 to `new` (each move checked) and set `fields`.

    Guarded on the row_version read here (or `expect_version`, the one the caller based its
    decision on). One event per state column that changed. Returns False when nothing changed
    (all no-ops and no fields, or the guard lost).
    """
    unknown = set(fields) - MODEL_FIELDS
    if unknown:
        raise TypeError(f"update_model_states: unknown fields {sorted(unknown)}")
    cur = get_model(conn, uuid)
    if expect_version is not None and cur.row_version != expect_version:
        return False
    at = _now(now)
    values: dict[str, Any] = {}
    changes: list[tuple[str, ModelStatus, ModelStatus]] = []
    if new is not None:
        if states.check_model(cur.status, new.status, uuid):
            values["status"] = new.status.value
            changes.append(("status", cur.status, new.status))
        for step in Step:
            old, to = cur.states.step(step), new.step(step)
            if states.check_step(old, to, uuid, step):
                values[step.column] = to.value
                values.update(_step_stamps(step, to, at))
                changes.append((step.column, old, to))
    values.update(fields)
    if not values:
        return False
    values.update(updated_at=at, row_version=models.c.row_version + 1)
    result = conn.execute(
        sa.update(models)
        .where(models.c.uuid == uuid, models.c.row_version == cur.row_version)
        .values(values)
    )
    if result.rowcount != 1:
        return False
    for column, old, to in changes:
        detail = {"field": column}
        record_event(conn, "model", uuid, old, to, reason=reason, actor=actor, detail=detail, now=at)
    return True


# ---------------------------------------------------------------------------------------------
# Jobs


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
) -> JobRow:
    """Insert attempt 1 of a new job, QUEUED. The id is 16 hex characters unless given."""
    if job_id is not None and not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument("job_id", f"must match [A-Za-z0-9_-]{{1,48}}, got {job_id!r}")
    _non_negative("gpus", gpus)
    _non_negative("max_retries", max_retries)
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


def claim_queued(conn: Connection, limit: int) -> list[JobRow]:
    """Up to `limit` QUEUED jobs, highest priority first, then oldest.

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
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [JobRow.from_row(r) for r in conn.execute(query).mappings()]


def assign_job(
    conn: Connection,
    job_id: str,
    node: str,
    gpu_indices: Sequence[int],
    *,
    actor: str = "scheduler",
    now: datetime | None = None,
) -> bool:
    """QUEUED -> RUNNING on `node` with these GPUs, committed before Agent.Launch.
    False when the job is no longer QUEUED (another replica placed it, or it was canceled)."""
    if len(set(gpu_indices)) != len(gpu_indices) or any(i < 0 for i in gpu_indices):
        raise InvalidArgument("gpu_indices", f"must be distinct and >= 0, got {list(gpu_indices)}")
    states.check_job(JobStatus.QUEUED, JobStatus.RUNNING, job_id)
    at = _now(now)
    result = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            node=node,
            gpu_indices=[int(i) for i in gpu_indices],
            assigned_at=at,
            row_version=jobs.c.row_version + 1,
        )
    )
    if result.rowcount != 1:
        return False
    record_event(
        conn, "job", job_id, JobStatus.QUEUED, JobStatus.RUNNING, reason="assigned", actor=actor,
        detail={"node": node, "gpu_indices": list(gpu_indices)}, now=at,
    )
    return True


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

    @property
    def terminal(self) -> bool:
        return self.status in states.JOB_TERMINAL


def job_briefs(conn: Connection, job_ids: Sequence[str]) -> dict[str, JobBrief]:
    """id -> brief for the given ids that exist, in one query."""
    if not job_ids:
        return {}
    rows = conn.execute(_JOB_BRIEFS, {"b_ids": list(job_ids)})
    return {r.id: JobBrief(r.id, JobStatus(r.status), r.node, r.attempt, bool(r.acked)) for r in rows}


_JOB_BRIEFS = sa.select(jobs.c.id, jobs.c.status, jobs.c.node, jobs.c.attempt, jobs.c.acked).where(
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
) -> bool:
    """Move a placed job to a final status (RUNNING -> SUCCESS/FAILED/STOPPED, QUEUED ->
    CANCELED/FAILED), checked by the state machine, with exit code and error message.

    The exit code follows the status (states.exit_code_for: SUCCESS 0, STOPPED -1 by default; a
    contradicting code is refused). A repeat of the current status is a no-op that keeps the
    first exit code and message (False). QUEUED -> RUNNING goes through assign_job.
    """
    to = JobStatus(to)
    cur = get_job(conn, job_id)
    if expect_version is not None and cur.row_version != expect_version:
        return False
    if not states.check_job(cur.status, to, job_id):
        return False
    if to is JobStatus.RUNNING:
        raise ValueError("QUEUED -> RUNNING needs a node: use assign_job")
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


def unacked_final_jobs(conn: Connection, node: str) -> list[JobRow]:
    """Ended attempts on `node` whose final state the agent has not been acknowledged yet."""
    query = sa.select(jobs).where(
        jobs.c.node == node,
        jobs.c.status.in_([s.value for s in states.JOB_TERMINAL]),
        jobs.c.acked.is_(False),
    )
    return [JobRow.from_row(r) for r in conn.execute(query.order_by(jobs.c.id)).mappings()]


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


# Arbitrary constant: the key of the advisory lock that serialises GPU assignment across replicas.
PLACEMENT_LOCK_KEY = 0x6770_7566_7363  # "gpufsc"


def lock_placement(conn: Connection) -> None:
    """Serialise GPU assignment across coordinator replicas until this transaction ends.

    SKIP LOCKED keeps two replicas from claiming the same *job*, but each would read GPU use
    without the other's uncommitted assignments and could pick the same GPU. Taken after the claim
    and before `gpus_in_use`: READ COMMITTED gives every statement a fresh snapshot, so the use read
    under the lock includes every assignment a previous holder committed. SQLite needs nothing: the
    transaction already holds the one writer lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLACEMENT_LOCK_KEY})


@dataclass(frozen=True, slots=True)
class PlaceableNode:
    """What the scheduler needs of a READY node: its healthy GPU indices, not the whole snapshot."""

    name: str
    address: str
    labels: dict[str, str]
    state: NodeState
    healthy: frozenset[int]
    # "docker" or "process": an image job runs only on docker, an argv-only job only on process.
    runtime: str = ""


def healthy_indices(gpus: Sequence[Mapping[str, Any]] | None) -> frozenset[int]:
    """The GPUs of a snapshot that may be assigned (no health field counts as healthy)."""
    return frozenset(int(g["index"]) for g in gpus or () if g.get("healthy", True))


_READY_NODES = sa.select(nodes.c.name, nodes.c.address, nodes.c.labels, nodes.c.gpus, nodes.c.runtime).where(
    nodes.c.state == NodeState.READY.value).order_by(nodes.c.name)
# The same on PostgreSQL, with the snapshot reduced to its healthy indices in the server (the
# Python test above, `healthy` missing counts as healthy): decoding 100 snapshots of dozens of GPUs
# a pass costs more than the placement itself.
_PG_READY_NODES = sa.text(
    "SELECT name, address, labels, runtime, (SELECT coalesce(jsonb_agg(g->'index'), '[]'::jsonb)"
    " FROM jsonb_array_elements(nodes.gpus) AS g"
    " WHERE coalesce((g->'healthy') NOT IN ('false'::jsonb, 'null'::jsonb, '0'::jsonb), true)) AS healthy"
    " FROM nodes WHERE state = :ready ORDER BY name"
).bindparams(ready=NodeState.READY.value)


def placeable_nodes(conn: Connection) -> list[PlaceableNode]:
    """READY nodes with their healthy GPU indices (freshness is the caller's: fleet.fresh_nodes)."""
    if conn.dialect.name == "postgresql":
        return [PlaceableNode(r.name, r.address, r.labels, NodeState.READY, frozenset(int(i) for i in r.healthy),
                              r.runtime) for r in conn.execute(_PG_READY_NODES)]
    return [PlaceableNode(r.name, r.address, r.labels, NodeState.READY, healthy_indices(r.gpus), r.runtime)
            for r in conn.execute(_READY_NODES)]


def node_runtimes(conn: Connection) -> set[str]:
    """The runtimes of every registered node (any state): what a submitted job can ever run on."""
    return {str(r) for r in conn.execute(sa.select(nodes.c.runtime).distinct()).scalars()}


# ---------------------------------------------------------------------------------------------
# Nodes


def get_node(conn: Connection, name: str) -> NodeRow:
    row = conn.execute(sa.select(nodes).where(nodes.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"node {name} not found")
    return NodeRow.from_row(row)


def list_nodes(conn: Connection) -> list[NodeRow]:
    return [NodeRow.from_row(r) for r in conn.execute(sa.select(nodes).order_by(nodes.c.name)).mappings()]


def upsert_node(
    conn: Connection,
    name: str,
    *,
    address: str,
    labels: Mapping[str, str],
    agent_version: str,
    runtime: str,
    gpus: Sequence[Mapping[str, Any]],
    actor: str = "agent",
    now: datetime | None = None,
) -> NodeRow:
    """Register (idempotent, by name): insert a READY node, or refresh a known one; a LOST node
    comes back READY (DRAINED when an operator drain is pending: its jobs were stopped on loss)."""
    if not _NODE_NAME.fullmatch(name):
        raise InvalidArgument("node_name", f"must match [A-Za-z0-9._-]{{1,128}}, got {name!r}")
    if not address or len(address) > 256:
        raise InvalidArgument("address", "must be host:port, at most 256 characters")
    at = _now(now)
    facts = {
        "address": address,
        "labels": dict(labels),
        "agent_version": agent_version,
        "runtime": runtime,
        "gpus": [dict(g) for g in gpus],
        "last_heartbeat": at,
    }
    inserted = conn.execute(
        _insert(conn, nodes)
        .values(
            name=name,
            state=NodeState.READY.value,
            drain_requested=False,
            registered_at=at,
            row_version=1,
            **facts,
        )
        .on_conflict_do_nothing(index_elements=["name"]),
        execution_options=_ROWCOUNT,
    )
    if inserted.rowcount == 1:
        record_event(conn, "node", name, None, NodeState.READY, reason="registered", actor=actor, now=at)
        return get_node(conn, name)
    cur = NodeRow.from_row(
        conn.execute(sa.select(nodes).where(nodes.c.name == name).with_for_update()).mappings().one()
    )
    values: dict[str, Any] = dict(facts, row_version=nodes.c.row_version + 1)
    if cur.state is NodeState.LOST:
        back = states.node_state_on_return(cur.drain_requested)
        states.check_node(cur.state, back, name)
        values["state"] = back.value
        record_event(conn, "node", name, cur.state, back, reason="registered again", actor=actor, now=at)
    conn.execute(sa.update(nodes).where(nodes.c.name == name).values(values))
    return get_node(conn, name)


_HEARTBEAT = (
    sa.update(nodes)
    .where(nodes.c.name == sa.bindparam("b_name"))
    .values(gpus=sa.bindparam("b_gpus", type_=nodes.c.gpus.type),
            last_heartbeat=sa.bindparam("b_at", type_=nodes.c.last_heartbeat.type))
    .returning(nodes.c.state)
)


def heartbeat_node(
    conn: Connection, name: str, gpus: Sequence[Mapping[str, Any]], now: datetime | None = None
) -> NodeState | None:
    """Store a heartbeat's GPU snapshot and time; the node's state, or None when the node is unknown
    (re-register). Does not revive a LOST node: that is Register's job (it carries the fencing).
    One prepared statement that returns only the state: this runs 50 times a second in a big fleet."""
    state = conn.execute(_HEARTBEAT, {"b_name": name, "b_gpus": list(gpus), "b_at": _now(now)}).scalar()
    return None if state is None else NodeState(state)


def set_node_state(
    conn: Connection, name: str, to: NodeState, *, reason: str, actor: str, now: datetime | None = None
) -> bool:
    """Move a node (checked). DRAINING/DRAINED record an operator drain, READY clears it, LOST
    keeps it so that the node comes back drained."""
    to = NodeState(to)
    cur = get_node(conn, name)
    if not states.check_node(cur.state, to, name):
        return False
    values: dict[str, Any] = {"state": to.value, "row_version": nodes.c.row_version + 1}
    if to in (NodeState.DRAINING, NodeState.DRAINED):
        values["drain_requested"] = True
    elif to is NodeState.READY:
        values["drain_requested"] = False
    result = conn.execute(
        sa.update(nodes).where(nodes.c.name == name, nodes.c.state == cur.state.value).values(values)
    )
    if result.rowcount != 1:
        return False
    record_event(conn, "node", name, cur.state, to, reason=reason, actor=actor, now=now)
    return True


def set_drain_requested(conn: Connection, name: str, drain: bool) -> bool:
    """Record an operator's drain wish without a state move (for a LOST node, which keeps LOST)."""
    result = conn.execute(
        sa.update(nodes)
        .where(nodes.c.name == name, nodes.c.drain_requested.is_not(drain))
        .values(drain_requested=drain, row_version=nodes.c.row_version + 1)
    )
    return result.rowcount == 1


def stale_nodes(conn: Connection, heartbeat_before: datetime) -> list[NodeRow]:
    """Nodes not LOST whose last heartbeat is older than `heartbeat_before` (now - node timeout)."""
    query = sa.select(nodes).where(
        nodes.c.state != NodeState.LOST.value,
        sa.or_(nodes.c.last_heartbeat.is_(None), nodes.c.last_heartbeat < heartbeat_before),
    )
    return [NodeRow.from_row(r) for r in conn.execute(query.order_by(nodes.c.name)).mappings()]


# ---------------------------------------------------------------------------------------------
# Metrics, progress, datasets


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
    """Live progress of a running job (one row per job, overwritten)."""
    values = {"current_epoch": current_epoch, "total_epoch": total_epoch, "metrics": dict(metrics),
              "updated_at": _now(now)}
    conn.execute(
        _insert(conn, job_progress)
        .values(job_id=job_id, **values)
        .on_conflict_do_update(index_elements=["job_id"], set_=values)
    )


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


# ---------------------------------------------------------------------------------------------
# SubmitJob idempotency keys


def claim_submit_key(conn: Connection, request_id: str, job_id: str, fingerprint: str,
                     now: datetime | None = None) -> bool:
    """Bind `request_id` to `job_id` (created in this transaction). False when the key is taken:
    the caller must roll back. On PostgreSQL a concurrent claim of the same key waits for the first
    to commit (the primary key), then finds it taken."""
    result = conn.execute(
        _insert(conn, submit_keys).values(request_id=request_id, job_id=job_id, fingerprint=fingerprint,
                                          created_at=_now(now))
        .on_conflict_do_nothing(index_elements=["request_id"]).returning(submit_keys.c.request_id)
    )
    return result.first() is not None


def find_submit_key(conn: Connection, request_id: str) -> tuple[str, str] | None:
    """(job_id, fingerprint) of the job a request_id created, or None."""
    row = conn.execute(sa.select(submit_keys.c.job_id, submit_keys.c.fingerprint)
                       .where(submit_keys.c.request_id == request_id)).first()
    return None if row is None else (row[0], row[1])
