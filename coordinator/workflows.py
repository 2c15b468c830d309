"""Work bigger than one job: dependencies between jobs, arrays (sweeps), pipelines (DAGs of steps).

Each is a set of ordinary jobs plus their options (coordinator/db/options.py), written in one
transaction with the jobs, so the scheduler never sees a job without what holds it back. The
scheduler's Gate decides when a held job may start; the Keeper cancels what can never start.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufleet.coordinator.db import options, repo
from gpufleet.coordinator.db.options import JobOptions
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.db.tokens import set_owner
from gpufleet.coordinator.dependencies import CycleError, DependencyMode, pipeline_state, topological_order
from gpufleet.coordinator.lifecycle import Lifecycle, check_job_id, check_submission
from sqlalchemy.engine import Connection

from gpufleet.errors import InvalidArgument, NotFound
from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.workflows")

MAX_DEPENDENCIES = 64
MAX_ARRAY = 1000
MAX_STEPS = 100
MAX_TIME_LIMIT_S = 365 * 86400
_STEP = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class JobRequest:
    """A SubmitJob's fields, decoded (spec as the stored dict)."""

    spec: dict[str, Any]
    gpus: int = 1
    priority: int = 0
    constraints: dict[str, str] = field(default_factory=dict)
    max_retries: int = 0
    resume_on_retry: bool = False
    name: str = ""
    depends_on: tuple[str, ...] = ()
    dependency_mode: str = ""
    time_limit_s: int = 0
    lost_after_seconds: int = 0
    # Who submits (a token's name; "" without auth): recorded in the jobs' own transaction, so the
    # scheduler never sees them without the owner their quota and fair share need.
    owner: str = ""


def check_options(req: JobRequest, field_prefix: str = "") -> DependencyMode:
    p = field_prefix
    if len(req.depends_on) > MAX_DEPENDENCIES:
        raise InvalidArgument(f"{p}depends_on", f"at most {MAX_DEPENDENCIES} jobs, got {len(req.depends_on)}")
    for dep in req.depends_on:
        check_job_id(dep)
    try:
        mode = DependencyMode(req.dependency_mode or "afterok")
    except ValueError:
        raise InvalidArgument(f"{p}dependency_mode",
                              f"must be afterok or afterany, got {req.dependency_mode!r}") from None
    if not 0 <= req.time_limit_s <= MAX_TIME_LIMIT_S:
        raise InvalidArgument(f"{p}time_limit_seconds",
                              f"must be between 0 and {MAX_TIME_LIMIT_S}, got {req.time_limit_s}")
    return mode


def _roots(conn: Connection, job_ids: Sequence[str]) -> tuple[str, ...]:
    """Root ids of the named jobs (any attempt's id names its job); NOT_FOUND names a missing one."""
    roots = tuple(dict.fromkeys(j.split(".")[0] for j in job_ids))
    found = options.latest_status(conn, roots)
    for r in roots:
        if r not in found:
            raise NotFound(f"depends_on: job {r} not found")
    return roots


@dataclass
class Workflows:
    life: Lifecycle

    @property
    def engine(self) -> Any:
        return self.life.engine

    # -- one job with options ------------------------------------------------------------------
    def submit_job(self, req: JobRequest, *, request_id: str = "") -> JobRow:
        mode = check_options(req)
        with_job: Callable[[Connection, JobRow], None] | None = None
        if req.depends_on or req.time_limit_s or req.owner:
            def with_job(conn: Connection, job: JobRow) -> None:
                _own(conn, req, job)
                if req.depends_on or req.time_limit_s:
                    options.save_job_options(conn, JobOptions(
                        job.root_id, _roots(conn, req.depends_on), mode.value, req.time_limit_s or None))
        return self.life.submit_job(spec=req.spec, gpus=req.gpus, priority=req.priority,
                                    constraints=req.constraints, max_retries=req.max_retries,
                                    resume_on_retry=req.resume_on_retry, name=req.name, request_id=request_id,
                                    lost_after_seconds=req.lost_after_seconds, with_job=with_job,
                                    owner=req.owner)

    def _create(self, conn: Connection, req: JobRequest, opts: JobOptions) -> JobRow:
        """A new job and its options (`opts` with the job's root id filled in)."""
        job = repo.create_job(conn, spec=req.spec, gpus=req.gpus, priority=req.priority,
                              constraints=req.constraints, max_retries=req.max_retries,
                              resume_on_retry=req.resume_on_retry, name=req.name, actor=self.life.actor,
                              owner=req.owner or None)
        options.save_job_options(conn, dataclasses.replace(opts, root_id=job.root_id))
        _own(conn, req, job)
        return job

    # -- arrays ----------------------------------------------------------------------------------
    def submit_array(self, template: JobRequest, count: int, max_running: int,
                     params: Sequence[str]) -> tuple[str, list[JobRow]]:
        mode = check_options(template, "job.")
        if params and count not in (0, len(params)):
            raise InvalidArgument("count", f"must be 0 or len(params) = {len(params)}, got {count}")
        n = count or len(params)
        if not 1 <= n <= MAX_ARRAY:
            raise InvalidArgument("count", f"must be between 1 and {MAX_ARRAY}, got {n}")
        if max_running < 0:
            raise InvalidArgument("max_running", f"must be >= 0, got {max_running}")
        overrides = [_json_object(p, f"params[{i}]") for i, p in enumerate(params)] or [{}] * n
        array_id = "arr-" + uuidlib.uuid4().hex[:12]
        reqs = [_array_member(template, array_id, i, overrides[i]) for i in range(n)]
        for i, r in enumerate(reqs):
            _checked(r, f"job (index {i})")
        with self.engine.begin() as conn:
            deps = _roots(conn, template.depends_on)
            made = [self._create(conn, r, JobOptions("", deps, mode.value, template.time_limit_s or None, array_id, i,
                                                     max_running))
                    for i, r in enumerate(reqs)]
        event(log, "array.submitted", array_id=array_id, jobs=n, max_running=max_running)
        self.life.wake_scheduler()
        return array_id, made

    def get_array(self, array_id: str) -> list[tuple[JobRow, JobOptions]]:
        with self.engine.connect() as conn:
            found = options.jobs_of(conn, array_id=array_id)
        if not found:
            raise NotFound(f"array {array_id} not found")
        return found

    def cancel_array(self, array_id: str) -> list[tuple[JobRow, JobOptions]]:
        for job, _ in self.get_array(array_id):
            if not job.terminal:
                self.life.cancel_job(job.id)
        return self.get_array(array_id)

    # -- pipelines -------------------------------------------------------------------------------
    def submit_pipeline(self, name: str, steps: Sequence[tuple[str, JobRequest, Sequence[str], bool]]) -> str:
        """`steps`: (name, request, after, shadow). Refuses a cycle, an unknown step, a step after a
        shadow step, with the field and the path."""
        if not 1 <= len(steps) <= MAX_STEPS:
            raise InvalidArgument("steps", f"must hold 1 to {MAX_STEPS} steps, got {len(steps)}")
        by_name: dict[str, tuple[JobRequest, list[str], bool]] = {}
        for i, (step, req, after, shadow) in enumerate(steps):
            if not _STEP.fullmatch(step):
                raise InvalidArgument(f"steps[{i}].name", f"must match [A-Za-z0-9_-]{{1,64}}, got {step!r}")
            if step in by_name:
                raise InvalidArgument(f"steps[{i}].name", f"step {step!r} is named twice")
            check_options(req, f"steps[{i}].job.")
            if req.depends_on:
                raise InvalidArgument(f"steps[{i}].job.depends_on", "steps are ordered by `after`, not depends_on")
            _checked(req, f"steps[{i}].job")
            by_name[step] = (req, list(dict.fromkeys(after)), shadow)
        for i, (step, _, after, _) in enumerate(steps):
            for a in after:
                if a in by_name and by_name[a][2]:
                    raise InvalidArgument(f"steps[{i}].after", f"step {step!r} comes after shadow step {a!r}; "
                                          "nothing consumes a shadow step")
        try:
            order = topological_order({s: v[1] for s, v in by_name.items()})
        except CycleError as exc:
            raise InvalidArgument("steps", f"the steps form a cycle: {exc}") from None
        except KeyError as exc:
            raise InvalidArgument("steps.after", str(exc.args[0])) from None
        pipeline_id = "pl-" + uuidlib.uuid4().hex[:12]
        with self.engine.begin() as conn:
            options.create_pipeline(conn, pipeline_id, name[:256])
            roots: dict[str, str] = {}
            for step in order:
                req, after, shadow = by_name[step]
                spec = copy.deepcopy(req.spec)
                env = dict(spec.get("env") or {})
                for a in after:  # upstream outputs, by folder, as FLEET_INPUT_<STEP>
                    env[f"FLEET_INPUT_{a.upper().replace('-', '_')}"] = str(by_name[a][0].spec.get("output_dir", ""))
                spec["env"] = env
                member = JobRequest(**{**req.__dict__, "spec": spec, "name": req.name or f"{name}/{step}"})
                job = self._create(conn, member, JobOptions(
                    "", tuple(roots[a] for a in after), DependencyMode.AFTEROK.value, req.time_limit_s or None,
                    pipeline_id=pipeline_id, step=step, shadow=shadow))
                roots[step] = job.root_id
        event(log, "pipeline.submitted", pipeline_id=pipeline_id, steps=len(order))
        self.life.wake_scheduler()
        return pipeline_id

    def get_pipeline(self, pipeline_id: str) -> tuple[str, str, list[tuple[JobRow, JobOptions]]]:
        """(name, state, steps in order of submission)."""
        with self.engine.connect() as conn:
            name = options.get_pipeline_name(conn, pipeline_id)
            if name is None:
                raise NotFound(f"pipeline {pipeline_id} not found")
            found = options.jobs_of(conn, pipeline_id=pipeline_id)
        state = pipeline_state([j.status.value for j, o in found if not o.shadow])
        return name, state, found

    def cancel_pipeline(self, pipeline_id: str) -> tuple[str, str, list[tuple[JobRow, JobOptions]]]:
        for job, _ in self.get_pipeline(pipeline_id)[2]:
            if not job.terminal:
                self.life.cancel_job(job.id)
        return self.get_pipeline(pipeline_id)


def _own(conn: Connection, req: JobRequest, job: JobRow) -> None:
    if req.owner:
        set_owner(conn, "job", job.root_id, req.owner, job.created_at)


def _checked(req: JobRequest, prefix: str) -> None:
    """check_submission of one member of an array or pipeline, naming the member in the field."""
    try:
        check_submission(req.spec, req.gpus, req.constraints)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{prefix}.{exc.field}", exc.rule) from None


def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(name, f"must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(name, f"must be a JSON object, got {type(value).__name__}")
    return value


def _array_member(t: JobRequest, array_id: str, i: int, override: Mapping[str, Any]) -> JobRequest:
    spec = copy.deepcopy(t.spec)
    spec["env"] = {**(spec.get("env") or {}), "FLEET_ARRAY_ID": array_id, "FLEET_ARRAY_INDEX": str(i)}
    if spec.get("output_dir"):
        spec["output_dir"] = f"{spec['output_dir'].rstrip('/')}/{i}"
    if override:
        base = json.loads(spec.get("params_json") or "{}")
        spec["params_json"] = json.dumps({**(base if isinstance(base, dict) else {}), **override})
    return JobRequest(**{**t.__dict__, "spec": spec, "name": f"{t.name or array_id}[{i}]"})
