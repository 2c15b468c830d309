"""Job and model options (dependencies, arrays, pipelines, time limits, auto-test) and the reads the
scheduler and the keeper make of them. Plain functions over a Connection; the caller owns the
transaction."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db.common import _insert, _now
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.db.schema import job_options, jobs, model_options, models, pipelines
from gpufleet.coordinator.states import JobStatus, ModelStatus
from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class JobOptions:
    root_id: str
    depends_on: tuple[str, ...] = ()
    dependency_mode: str = "afterok"
    time_limit_s: int | None = None
    array_id: str | None = None
    array_index: int | None = None
    array_max_running: int = 0
    pipeline_id: str | None = None
    step: str | None = None
    shadow: bool = False

    @classmethod
    def from_row(cls, r: Any) -> JobOptions:
        return cls(r.root_id, tuple(r.depends_on or ()), r.dependency_mode, r.time_limit_s, r.array_id,
                   r.array_index, r.array_max_running, r.pipeline_id, r.step, bool(r.shadow))


def save_job_options(conn: Connection, opts: JobOptions) -> None:
    conn.execute(sa.insert(job_options).values(
        root_id=opts.root_id, depends_on=list(opts.depends_on), dependency_mode=opts.dependency_mode,
        time_limit_s=opts.time_limit_s, array_id=opts.array_id, array_index=opts.array_index,
        array_max_running=opts.array_max_running, pipeline_id=opts.pipeline_id, step=opts.step,
        shadow=opts.shadow))


def get_job_options(conn: Connection, root_ids: Iterable[str]) -> dict[str, JobOptions]:
    ids = sorted(set(root_ids))
    if not ids:
        return {}
    rows = conn.execute(sa.select(job_options).where(job_options.c.root_id.in_(ids)))
    return {r.root_id: JobOptions.from_row(r) for r in rows}


def latest_status(conn: Connection, root_ids: Iterable[str]) -> dict[str, str]:
    """Each job's current status: its latest attempt's (a requeue is a new attempt row)."""
    ids = sorted(set(root_ids))
    if not ids:
        return {}
    latest = (sa.select(jobs.c.root_id, sa.func.max(jobs.c.attempt).label("attempt"))
              .where(jobs.c.root_id.in_(ids)).group_by(jobs.c.root_id).subquery())
    rows = conn.execute(sa.select(jobs.c.root_id, jobs.c.status).join(
        latest, sa.and_(jobs.c.root_id == latest.c.root_id, jobs.c.attempt == latest.c.attempt)))
    return {r.root_id: r.status for r in rows}


def running_in_arrays(conn: Connection, array_ids: Iterable[str]) -> dict[str, int]:
    ids = sorted(set(array_ids))
    if not ids:
        return {}
    rows = conn.execute(
        sa.select(job_options.c.array_id, sa.func.count()).select_from(
            jobs.join(job_options, jobs.c.root_id == job_options.c.root_id))
        .where(job_options.c.array_id.in_(ids), jobs.c.status == JobStatus.RUNNING.value)
        .group_by(job_options.c.array_id))
    return {r[0]: int(r[1]) for r in rows}


def _with_options(where: Any) -> sa.Select[Any]:
    return (sa.select(jobs, job_options.c.time_limit_s.label("opt_time_limit_s"))
            .select_from(jobs.join(job_options, jobs.c.root_id == job_options.c.root_id)).where(where))


def running_with_time_limits(conn: Connection) -> list[tuple[JobRow, int]]:
    rows = conn.execute(_with_options(sa.and_(jobs.c.status == JobStatus.RUNNING.value,
                                              job_options.c.time_limit_s.is_not(None)))).mappings()
    return [(JobRow.from_row({k: v for k, v in r.items() if k != "opt_time_limit_s"}), int(r["opt_time_limit_s"]))
            for r in rows]


def queued_with_dependencies(conn: Connection) -> list[tuple[JobRow, JobOptions]]:
    rows = conn.execute(sa.select(jobs, *[c.label(f"opt_{c.name}") for c in job_options.c]).select_from(
        jobs.join(job_options, jobs.c.root_id == job_options.c.root_id)).where(
        jobs.c.status == JobStatus.QUEUED.value)).mappings()
    out = []
    for r in rows:
        opts = JobOptions.from_row(_Opt(
            {k.removeprefix("opt_"): v for k, v in r.items() if k.startswith("opt_")}))
        if opts.depends_on:
            out.append((JobRow.from_row({k: v for k, v in r.items() if not k.startswith("opt_")}), opts))
    return out


class _Opt:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def jobs_of(conn: Connection, *, array_id: str | None = None, pipeline_id: str | None = None) -> list[
        tuple[JobRow, JobOptions]]:
    """The latest attempt of every job of an array or a pipeline, in index/step order."""
    col, value = (job_options.c.array_id, array_id) if array_id is not None else (job_options.c.pipeline_id,
                                                                                   pipeline_id)
    roots = {r.root_id: JobOptions.from_row(r) for r in conn.execute(sa.select(job_options).where(col == value))}
    if not roots:
        return []
    latest = (sa.select(jobs.c.root_id, sa.func.max(jobs.c.attempt).label("attempt"))
              .where(jobs.c.root_id.in_(sorted(roots))).group_by(jobs.c.root_id).subquery())
    rows = conn.execute(sa.select(jobs).join(
        latest, sa.and_(jobs.c.root_id == latest.c.root_id, jobs.c.attempt == latest.c.attempt))).mappings()
    out = [(j, roots[j.root_id]) for j in (JobRow.from_row(r) for r in rows)]
    return sorted(out, key=lambda x: (x[1].array_index or 0, x[0].created_at, x[0].id))


def create_pipeline(conn: Connection, pipeline_id: str, name: str, now: datetime | None = None) -> None:
    conn.execute(sa.insert(pipelines).values(id=pipeline_id, name=name, created_at=_now(now)))


def get_pipeline_name(conn: Connection, pipeline_id: str) -> str | None:
    return conn.execute(sa.select(pipelines.c.name).where(pipelines.c.id == pipeline_id)).scalar()


@dataclass(frozen=True, slots=True)
class ModelOptions:
    uuid: str
    auto_test: str = ""
    time_limit_s: int | None = None


def save_model_options(conn: Connection, uuid: str, *, auto_test: str, time_limit_s: int | None) -> None:
    stmt = _insert(conn, model_options).values(uuid=uuid, auto_test=auto_test, time_limit_s=time_limit_s)
    conn.execute(stmt.on_conflict_do_update(index_elements=["uuid"],
                                            set_={"auto_test": auto_test, "time_limit_s": time_limit_s}))


def get_model_options(conn: Connection, uuids: Sequence[str]) -> dict[str, ModelOptions]:
    if not uuids:
        return {}
    rows = conn.execute(sa.select(model_options).where(model_options.c.uuid.in_(sorted(set(uuids)))))
    return {r.uuid: ModelOptions(r.uuid, r.auto_test, r.time_limit_s) for r in rows}


def models_due_for_auto_test(conn: Connection) -> list[tuple[str, str]]:
    """(uuid, auto_test) of models whose step 1 completed and whose step 2 has not been started."""
    rows = conn.execute(
        sa.select(models.c.uuid, model_options.c.auto_test)
        .select_from(models.join(model_options, models.c.uuid == model_options.c.uuid))
        .where(model_options.c.auto_test != "", models.c.step1_state == ModelStatus.COMPLETED.value,
               models.c.step2_state == ModelStatus.READY.value, models.c.step2_started_at.is_(None)))
    return [(r.uuid, r.auto_test) for r in rows]
