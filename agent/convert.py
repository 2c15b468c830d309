"""Protobuf <-> agent domain objects. The only agent module besides service.py that imports *_pb2."""
from __future__ import annotations

import math
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from gpufleet.agent.gpus import GpuSample
from gpufleet.agent.states import JobState
from gpufleet.agent.store import JobRecord

from gpufleet.jobspec import job_type_to_pb
from gpufleet.jobspec import spec_from_pb as spec_from_pb  # the shared conversion, re-exported
from gpufleet.jobspec import spec_to_pb as spec_to_pb
from gpufleet.v1 import common_pb2 as pb


def state_to_pb(state: JobState) -> int:
    return int(pb.AgentJobState.Value("AGENT_JOB_STATE_" + state.value))


def state_from_pb(value: int) -> JobState:
    name = pb.AgentJobState.Name(value)
    return JobState(name.removeprefix("AGENT_JOB_STATE_"))


def ts(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _i32(value: Any) -> int:
    """`value` as an int clamped into int32 (the wire type); anything but a finite number is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(max(int(value), -(2**31)), 2**31 - 1)


def _str(value: Any) -> str:
    """A string protobuf accepts: file names read with surrogateescape hold lone surrogates."""
    if not isinstance(value, str):
        return ""
    return value.encode("utf-8", "replace").decode("utf-8")


def _metric_row(m: Any) -> pb.MetricRow | None:
    if not isinstance(m, dict) or not isinstance(m.get("values"), dict):
        return None
    values = {_str(k): float(v) for k, v in m["values"].items()
              if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)}
    return pb.MetricRow(split=_str(m.get("split")), epoch=_i32(m.get("epoch")), values=values)


def probe_to_pb(v: dict[str, Any] | None) -> pb.ProbeResult | None:
    """Never raises: a stored verdict (possibly written by an older agent) that does not fit the wire types
    is clamped, or its odd parts left out, so every RPC that carries the job still answers."""
    if not v:
        return None
    rows = v.get("metrics")
    metrics = [row for row in map(_metric_row, rows if isinstance(rows, list) else []) if row is not None]
    return pb.ProbeResult(
        completed=bool(v.get("completed")), reason=_str(v.get("reason")), val_lines=_i32(v.get("val_lines")),
        expected_lines=_i32(v.get("expected_lines")), checkpoints=_i32(v.get("checkpoints")),
        best_checkpoint=_str(v.get("best_checkpoint")), has_result_zip=bool(v.get("has_result_zip")),
        metrics=metrics, best_epoch=_i32(v.get("best_epoch")), best_metric_key=_str(v.get("best_metric_key")),
        best_metric_mode=_str(v.get("best_metric_mode")),
        latest_checkpoint_epoch=_i32(v.get("latest_checkpoint_epoch")),
        latest_checkpoint=_str(v.get("latest_checkpoint")), total_epoch=_i32(v.get("total_epoch")),
    )


def progress_to_pb(p: dict[str, Any] | None) -> pb.Progress | None:
    if not p:
        return None
    return pb.Progress(current_epoch=p.get("current_epoch", 0), total_epoch=p.get("total_epoch", 0),
                       last_metrics=p.get("metrics", {}), updated_at=ts(p.get("updated_at")))


def job_to_pb(j: JobRecord, with_metrics: bool = True, with_log: bool = False) -> pb.JobStatus:
    probe = j.probe
    if probe and not with_metrics:
        probe = {**probe, "metrics": []}
    out = pb.JobStatus(
        job_id=j.job_id, attempt=j.attempt, state=state_to_pb(j.state), signal=j.signal,  # type: ignore[arg-type]
        created_at=ts(j.created_at), started_at=ts(j.started_at), finished_at=ts(j.finished_at),
        gpu_indices=j.gpu_indices, runtime=j.runtime, runtime_id=j.runtime_id, message=j.message,
        probe=probe_to_pb(probe), progress=progress_to_pb(j.progress),
        output_dir=j.spec.get("output_dir", ""), acknowledged=j.acknowledged, stop_requested=j.stop_requested,
        job_type=job_type_to_pb(j.spec.get("job_type", "")),  # type: ignore[arg-type]
    )
    if j.exit_code is not None:
        out.exit_code = j.exit_code
    if j.gpu_usage:
        out.gpu_usage.CopyFrom(usage_to_pb(j.gpu_usage))
    if with_log and not j.live:
        out.log_tail = j.log_tail
    return out


def usage_to_pb(u: dict[str, Any]) -> pb.GpuUsage:
    """Never raises (a stored record is clamped to the wire types, like probe_to_pb)."""
    def num(key: str) -> float:
        v = u.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else 0.0
    return pb.GpuUsage(gpu_seconds=num("gpu_seconds"), energy_joules=num("energy_joules"),
                       peak_memory_bytes=min(int(num("peak_memory_bytes")), 2**63 - 1),
                       mean_utilization=num("mean_utilization"), samples=_i32(u.get("samples")))


def gpu_to_pb(g: GpuSample, assigned: str = "") -> pb.GpuInfo:
    return pb.GpuInfo(
        index=g.index, uuid=g.uuid, name=g.name, utilization_gpu=g.utilization_gpu,
        utilization_memory=g.utilization_memory, memory_used_bytes=g.memory_used_bytes,
        memory_total_bytes=g.memory_total_bytes, temperature_c=g.temperature_c, power_w=g.power_w,
        power_limit_w=g.power_limit_w, ecc_errors=g.ecc_errors, healthy=g.healthy, assigned_job_id=assigned,
        health_reason=g.health_reason,
        processes=[pb.GpuProcess(pid=_i32(p.pid), used_bytes=p.used_bytes, kind=p.kind, job_id=p.job_id)
                   for p in g.processes],
    )
