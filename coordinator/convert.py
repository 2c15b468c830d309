"""Protobuf <-> coordinator rows. With service.py, the only coordinator modules that import *_pb2."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from gpufleet.coordinator.db.options import JobOptions
from gpufleet.coordinator.db.rows import JobRow, MetricPoint, ModelRow, NodeRow, Progress
from gpufleet.coordinator.db.usage import UsageRow, UsageSum
from gpufleet.coordinator.states import JobStatus, JobType, ModelStatus, NodeState, Step, format_duration

from gpufleet import jobspec
from gpufleet.errors import InvalidArgument
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

# gRPC clients refuse answers over 4 MiB, while one job or model may encode to ~0.5-1 MiB (its spec is bounded at
# 512 KiB, a model repeats its params): a list page is kept to this many encoded bytes (see fit_page).
LIST_PAGE_BYTES = 3 * 1024 * 1024

M = TypeVar("M", bound=Message)


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    t = Timestamp()
    t.FromDatetime(value.astimezone(UTC))
    return t


def agent_state_name(value: int) -> str:
    return pb.AgentJobState.Name(value).removeprefix("AGENT_JOB_STATE_")


def spec_from_pb(s: pb.JobSpec) -> dict[str, Any]:
    return jobspec.spec_from_pb(s).to_dict()


def spec_to_pb(spec: dict[str, Any]) -> pb.JobSpec:
    return jobspec.spec_to_pb(jobspec.JobSpec.from_dict(spec))


def model_status_from_pb(value: int, field: str) -> ModelStatus | None:
    if value == cpb.MODEL_STATUS_UNSPECIFIED:
        return None
    if value not in cpb.ModelStatus.values():
        raise InvalidArgument(field, f"unknown model status {value}")
    return ModelStatus(cpb.ModelStatus.Name(value).removeprefix("MODEL_STATUS_"))


def model_status_to_pb(s: ModelStatus) -> int:
    return int(cpb.ModelStatus.Value("MODEL_STATUS_" + s.value))


def job_status_from_pb(value: int, field: str) -> JobStatus | None:
    if value == cpb.JOB_STATUS_CODE_UNSPECIFIED:
        return None
    if value not in cpb.JobStatusCode.values():
        raise InvalidArgument(field, f"unknown job status {value}")
    return JobStatus(cpb.JobStatusCode.Name(value).removeprefix("JOB_STATUS_CODE_"))


def job_status_to_pb(s: JobStatus) -> int:
    return int(cpb.JobStatusCode.Value("JOB_STATUS_CODE_" + s.value))


def node_state_to_pb(s: NodeState) -> int:
    return int(cpb.NodeState.Value("NODE_STATE_" + s.value))


def progress_to_pb(p: Progress | None) -> pb.Progress | None:
    if p is None:
        return None
    metrics = {k: float(v) for k, v in p.metrics.items() if isinstance(v, int | float)}
    return pb.Progress(current_epoch=p.current_epoch, total_epoch=p.total_epoch, last_metrics=metrics,
                       updated_at=ts(p.updated_at))


def model_to_pb(m: ModelRow, progress: Progress | None = None, now: datetime | None = None) -> cpb.Model:
    now = now or datetime.now(UTC)
    s1, s2 = m.step_seconds(Step.TRAIN, now), m.step_seconds(Step.TEST, now)
    return cpb.Model(
        uuid=m.uuid, model_no=m.model_no, version=m.version, train_type=m.train_type, memo=m.memo,
        params_json=m.params_json, status=model_status_to_pb(m.status),  # type: ignore[arg-type]
        step1_state=model_status_to_pb(m.step1_state), step2_state=model_status_to_pb(m.step2_state),  # type: ignore[arg-type]
        step1_started_at=ts(m.step1_started_at), step1_finished_at=ts(m.step1_finished_at),
        step2_started_at=ts(m.step2_started_at), step2_finished_at=ts(m.step2_finished_at),
        step1_duration=format_duration(s1) if s1 is not None else "", step1_seconds=s1 or 0.0,
        step2_duration=format_duration(s2) if s2 is not None else "", step2_seconds=s2 or 0.0,
        step1_metric_saved=m.step1_metric_saved, step2_metric_saved=m.step2_metric_saved,
        current_attempt_id=m.current_attempt_id or "", best_epoch=m.best_epoch or 0, last_error=m.last_error,
        created_at=ts(m.created_at), test_epoch=m.test_epoch or 0, spec=spec_to_pb(m.spec) if m.spec else None,
        gpus=m.gpus, status_name=m.status.value, step1_state_name=m.step1_state.value,
        step2_state_name=m.step2_state.value, progress=progress_to_pb(progress),
    )


def job_to_pb(j: JobRow, progress: Progress | None = None) -> cpb.Job:
    out = cpb.Job(
        job_id=j.id, model_uuid=j.model_uuid or "",
        job_type=pb.JOB_TYPE_EVAL if j.job_type is JobType.EVAL else pb.JOB_TYPE_TRAIN,
        attempt=j.attempt, status=job_status_to_pb(j.status),  # type: ignore[arg-type]
        error_message=j.error_message, node=j.node or "", gpu_indices=list(j.gpu_indices), gpus=j.gpus,
        priority=j.priority, spec=spec_to_pb(j.spec), max_retries=j.max_retries, retries_used=j.retries_used,
        created_at=ts(j.created_at), started_at=ts(j.started_at), finished_at=ts(j.finished_at),
        progress=progress_to_pb(progress), name=j.name, status_name=j.status.value, constraints=j.constraints,
        resume_on_retry=j.resume_on_retry, superseded_by=j.superseded_by or "",
        node_unreachable_since=ts(j.node_unreachable_since), lost_after_seconds=j.lost_after_seconds or 0,
        warnings=j.warnings or "",
    )
    if j.exit_code is not None:
        out.exit_code = j.exit_code
    return out


def fit_page(items: Sequence[M], lighten: Callable[[M], None], budget: int = LIST_PAGE_BYTES) -> list[M]:
    """`items` in order, the last ones lightened in place (user-sized fields left out) until the page encodes to
    at most `budget` bytes; the first item always stays full. No item leaves its page: clients page by
    (page, size) offsets, so a page cut short would hide the items between its end and the next page."""
    out = list(items)
    total = sum(item.ByteSize() for item in out)
    i = len(out)
    while total > budget and i > 1:
        i -= 1
        before = out[i].ByteSize()
        lighten(out[i])
        total -= before - out[i].ByteSize()
    return out


def _lighten_job(j: cpb.Job) -> None:
    """The user-sized parts (spec up to 512 KiB, constraints up to 64 x 256 characters); GetJob carries them."""
    j.ClearField("spec")
    j.ClearField("constraints")
    j.trimmed = True


def _lighten_model(m: cpb.Model) -> None:
    """The user-sized parts (params and spec up to 512 KiB each, memo up to 4096 characters); GetModel carries
    them."""
    m.ClearField("params_json")
    m.ClearField("spec")
    m.ClearField("memo")
    m.trimmed = True


def jobs_page_to_pb(rows: Sequence[JobRow]) -> list[cpb.Job]:
    """One ListJobs page: full jobs while they fit LIST_PAGE_BYTES, then jobs without spec and constraints."""
    return fit_page([job_to_pb(j) for j in rows], _lighten_job)


def models_page_to_pb(rows: Sequence[ModelRow], now: datetime | None = None) -> list[cpb.Model]:
    """One ListModels page: full models while they fit LIST_PAGE_BYTES, then models without params, spec and
    memo."""
    now = now or datetime.now(UTC)
    return fit_page([model_to_pb(m, now=now) for m in rows], _lighten_model)


def node_to_pb(n: NodeRow, running: int = 0, dial_error: str = "") -> cpb.Node:
    gpus = [_gpu_to_pb(g) for g in n.gpus]
    return cpb.Node(
        name=n.name, address=n.address, labels=n.labels, state=node_state_to_pb(n.shown_state),  # type: ignore[arg-type]
        last_heartbeat=ts(n.last_heartbeat), agent_version=n.agent_version, gpus=gpus, state_name=n.shown_state.value,
        runtime=n.runtime, running_jobs=running, dial_error=dial_error,
    )


def _gpu_to_pb(g: dict[str, Any]) -> pb.GpuInfo:
    fields = pb.GpuInfo.DESCRIPTOR.fields_by_name
    out = pb.GpuInfo(**{k: v for k, v in g.items() if k in fields and k != "processes"})
    for p in g.get("processes") or ():
        out.processes.add(pid=int(p.get("pid", 0)), used_bytes=int(p.get("used_bytes", 0)),
                          kind=str(p.get("kind", "")), job_id=str(p.get("job_id", "")))
    return out


MAX_GPU_PROCESSES = 32  # per GPU in a node's stored snapshot: a fork bomb must not bloat every heartbeat row


def gpu_from_pb(g: pb.GpuInfo) -> dict[str, Any]:
    return {
        "index": g.index, "uuid": g.uuid, "name": g.name, "utilization_gpu": g.utilization_gpu,
        "utilization_memory": g.utilization_memory, "memory_used_bytes": g.memory_used_bytes,
        "memory_total_bytes": g.memory_total_bytes, "temperature_c": g.temperature_c, "power_w": g.power_w,
        "power_limit_w": g.power_limit_w, "ecc_errors": g.ecc_errors, "healthy": g.healthy,
        "assigned_job_id": g.assigned_job_id, "health_reason": g.health_reason,
        "processes": [{"pid": p.pid, "used_bytes": p.used_bytes, "kind": p.kind[:16], "job_id": p.job_id[:64]}
                      for p in g.processes[:MAX_GPU_PROCESSES]],
    }


def job_usage_to_pb(u: UsageRow, out: cpb.Job) -> None:
    out.gpu_usage.CopyFrom(pb.GpuUsage(gpu_seconds=u.gpu_seconds, energy_joules=u.energy_joules,
                                       peak_memory_bytes=u.peak_memory_bytes, mean_utilization=u.mean_utilization,
                                       samples=u.samples))


def usage_sum_to_pb(r: UsageSum) -> cpb.UsageRow:
    return cpb.UsageRow(key=r.key, jobs=r.jobs, gpu_seconds=r.gpu_seconds, energy_joules=r.energy_joules,
                        peak_memory_bytes=r.peak_memory_bytes, mean_utilization=r.mean_utilization)


def metrics_to_pb(points: list[MetricPoint]) -> list[pb.MetricRow]:
    return [pb.MetricRow(split=p.split, epoch=p.epoch, values=p.values) for p in points]


def job_options_to_pb(o: JobOptions, out: cpb.Job) -> None:
    out.depends_on.extend(o.depends_on)
    out.dependency_mode = o.dependency_mode if o.depends_on else ""
    out.time_limit_seconds = o.time_limit_s or 0
    out.array_id, out.array_index = o.array_id or "", o.array_index or 0
    out.pipeline_id, out.step, out.shadow = o.pipeline_id or "", o.step or "", o.shadow
