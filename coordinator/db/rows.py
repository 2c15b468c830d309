"""Typed rows the repository returns (immutable snapshots, read inside the caller's transaction).

Status fields are the enums of coordinator/states.py; timestamps are aware UTC datetimes; JSON
columns come back as plain dicts and lists (tuples for GPU indices).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Generic, TypeVar

from gpufleet.coordinator.states import (
    JOB_TERMINAL,
    DesiredState,
    JobStatus,
    JobType,
    ModelStates,
    ModelStatus,
    NodeState,
    Step,
)

T = TypeVar("T")


def _kwargs(cls: type, row: Mapping[Any, Any]) -> dict[str, Any]:
    # Columns added later (migration 0005) have defaults: rows built in memory may leave them out.
    return {f.name: row[f.name] for f in fields(cls) if f.name in row}


@dataclass(frozen=True, slots=True)
class ModelRow:
    uuid: str
    model_no: str
    version: str
    train_type: str
    memo: str
    params_json: str
    spec: dict[str, Any]
    gpus: int
    priority: int
    constraints: dict[str, str]
    max_retries: int
    status: ModelStatus
    step1_state: ModelStatus
    step2_state: ModelStatus
    step1_started_at: datetime | None
    step1_finished_at: datetime | None
    step2_started_at: datetime | None
    step2_finished_at: datetime | None
    step1_metric_saved: bool
    step2_metric_saved: bool
    current_attempt_id: str | None
    best_epoch: int | None
    test_epoch: int | None
    last_error: str
    created_at: datetime
    updated_at: datetime
    row_version: int
    lost_after_seconds: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ModelRow:
        kw = _kwargs(cls, row)
        for name in ("status", "step1_state", "step2_state"):
            kw[name] = ModelStatus(kw[name])
        return cls(**kw)

    @property
    def states(self) -> ModelStates:
        return ModelStates(self.status, self.step1_state, self.step2_state)

    def step_seconds(self, step: Step, now: datetime) -> float | None:
        """How long the step ran: start to end, or start to `now` while it has no end yet;
        None when it never started."""
        started = self.step1_started_at if step is Step.TRAIN else self.step2_started_at
        finished = self.step1_finished_at if step is Step.TRAIN else self.step2_finished_at
        if started is None:
            return None
        return max(0.0, ((finished or now) - started).total_seconds())


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    root_id: str
    model_uuid: str | None
    job_type: JobType
    attempt: int
    status: JobStatus
    desired_state: DesiredState
    observed_state: str | None
    observed_at: datetime | None
    exit_code: int | None
    error_message: str
    node: str | None
    gpu_indices: tuple[int, ...]
    gpus: int
    priority: int
    spec: dict[str, Any]
    constraints: dict[str, str]
    max_retries: int
    retries_used: int
    resume_on_retry: bool
    name: str
    superseded_by: str | None
    acked: bool
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    row_version: int
    node_unreachable_since: datetime | None = None
    lost_after_seconds: int | None = None
    warnings: str | None = None
    # Who submitted it (a token's name; None without auth): fixed at creation (migration 0021).
    owner: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRow:
        kw = _kwargs(cls, row)
        kw["job_type"] = JobType(kw["job_type"])
        kw["status"] = JobStatus(kw["status"])
        kw["desired_state"] = DesiredState(kw["desired_state"])
        kw["gpu_indices"] = tuple(kw["gpu_indices"] or ())
        return cls(**kw)

    @property
    def terminal(self) -> bool:
        return self.status in JOB_TERMINAL

    @property
    def can_retry(self) -> bool:
        """The retry policy allows one more automatic attempt (node loss, launch failure)."""
        return self.retries_used < self.max_retries


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    address: str
    labels: dict[str, str]
    state: NodeState
    drain_requested: bool
    last_heartbeat: datetime | None
    agent_version: str
    runtime: str
    gpus: list[dict[str, Any]]
    registered_at: datetime
    row_version: int
    unreachable_since: datetime | None = None

    @property
    def shown_state(self) -> NodeState:
        """The state users see: UNREACHABLE is not stored (a silent node keeps its `state`, which
        drains and returns act on), it is shown while unreachable_since is set."""
        return NodeState.UNREACHABLE if self.unreachable_since is not None else self.state

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> NodeRow:
        kw = _kwargs(cls, row)
        kw["state"] = NodeState(kw["state"])
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; `page` is 0-based."""

    items: list[T]
    total_elements: int
    total_pages: int
    page: int
    size: int


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One csv row of one split: `values` maps metric name to value."""

    split: str
    epoch: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: str
    current_epoch: int
    total_epoch: int
    metrics: dict[str, Any]
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Progress:
        return cls(**_kwargs(cls, row))


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: datetime
    entity: str
    entity_id: str
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> EventRow:
        return cls(**_kwargs(cls, row))
