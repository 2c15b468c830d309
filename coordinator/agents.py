"""gRPC clients for the fleet's agents: one channel per node address, every call with a deadline.

The coordinator never calls an agent inside a database transaction (STYLE.md, point 12).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import grpc
from gpufleet.coordinator.dialwatch import DialProblems

from gpufleet.agentsecret import SecretInterceptor
from gpufleet.server import channel
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb

RPC_TIMEOUT = 5.0
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
LAUNCH_TIMEOUT = 30.0  # docker create+start of a big image can take a while


def row_id(root_id: str, attempt: int) -> str:
    """The coordinator's row id of an attempt (the agent only knows root id + attempt)."""
    return root_id if attempt == 1 else f"{root_id}.{attempt}"


@dataclass(frozen=True)
class Observation:
    """What an agent said about one job attempt (or that it could not say)."""

    kind: str  # "found" | "not_found" | "error"
    state: str = ""  # agent state name: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, LOST
    attempt: int = 0
    exit_code: int | None = None
    message: str = ""
    probe: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    error: str = ""
    log_tail: bytes = b""
    # The attempt's GPU use (proto GpuUsage as a dict), once it ended; None from older agents.
    gpu_usage: dict[str, Any] | None = None


def probe_from_pb(p: pb.ProbeResult) -> dict[str, Any]:
    return {
        "completed": p.completed, "reason": p.reason, "val_lines": p.val_lines,
        "expected_lines": p.expected_lines, "checkpoints": p.checkpoints, "best_checkpoint": p.best_checkpoint,
        "has_result_zip": p.has_result_zip, "best_epoch": p.best_epoch, "best_metric_key": p.best_metric_key,
        "latest_checkpoint_epoch": p.latest_checkpoint_epoch, "latest_checkpoint": p.latest_checkpoint,
        "metrics": [(m.split, m.epoch, dict(m.values)) for m in p.metrics],
    }


def observation_from_pb(st: pb.JobStatus) -> Observation:
    state = pb.AgentJobState.Name(st.state).removeprefix("AGENT_JOB_STATE_")
    progress = None
    if st.HasField("progress"):
        progress = {"current_epoch": st.progress.current_epoch, "total_epoch": st.progress.total_epoch,
                    "metrics": dict(st.progress.last_metrics)}
    return Observation(
        kind="found", state=state, attempt=st.attempt,
        exit_code=st.exit_code if st.HasField("exit_code") else None, message=st.message,
        probe=probe_from_pb(st.probe) if st.HasField("probe") else None, progress=progress,
        log_tail=st.log_tail, gpu_usage=usage_from_pb(st.gpu_usage) if st.HasField("gpu_usage") else None,
    )


def usage_from_pb(u: pb.GpuUsage) -> dict[str, Any]:
    return {"gpu_seconds": u.gpu_seconds, "energy_joules": u.energy_joules,
            "peak_memory_bytes": u.peak_memory_bytes, "mean_utilization": u.mean_utilization,
            "samples": u.samples}


class AgentPool:
    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._lock = threading.Lock()
        self._stubs: dict[str, agent_pb2_grpc.AgentStub] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self.credentials = credentials
        # Control secrets agents sent with Register (plaintext agents: agent/control.py).
        self._secrets: dict[str, str] = {}
        self._retired: list[grpc.Channel] = []
        # TLS failures of calls to each address, shown on its node (coordinator/dialwatch.py).
        self.problems = DialProblems()

    def remember_secret(self, address: str, secret: str) -> None:
        """Use `secret` on every call to `address` from now on (a new channel if it changed)."""
        with self._lock:
            if not secret or self._secrets.get(address) == secret:
                return
            self._secrets[address] = secret
            self._stubs.pop(address, None)
            old = self._channels.pop(address, None)
            if old is not None:
                self._retired.append(old)  # calls in flight on it finish; closed with the pool

    def stub(self, address: str) -> agent_pb2_grpc.AgentStub:
        with self._lock:
            s = self._stubs.get(address)
            if s is None:
                ch = channel(address, self.credentials)
                self._channels[address] = ch
                secret = self._secrets.get(address)
                watched = [self.problems.interceptor(address), *([SecretInterceptor(secret)] if secret else [])]
                calls = grpc.intercept_channel(ch, *watched)
                s = self._stubs[address] = agent_pb2_grpc.AgentStub(calls)
            return s

    def launch(self, address: str, job_id: str, attempt: int, spec: pb.JobSpec, gpus: list[int],
               owner: str | None = None) -> pb.JobStatus:
        """`owner`: the job's (jobs.owner, set under auth); the agent runs its jobs under its own uid."""
        return self.stub(address).Launch(
            apb.LaunchRequest(job_id=job_id, attempt=attempt, spec=spec, gpu_indices=gpus, owner=owner or ""),
            timeout=LAUNCH_TIMEOUT,
        )

    def launch_future(self, address: str, job_id: str, attempt: int, spec: pb.JobSpec,
                      gpus: list[int], owner: str | None = None) -> grpc.Future:
        return self.stub(address).Launch.future(  # type: ignore[no-any-return]
            apb.LaunchRequest(job_id=job_id, attempt=attempt, spec=spec, gpu_indices=gpus, owner=owner or ""),
            timeout=LAUNCH_TIMEOUT,
        )

    def inspect(self, address: str, job_id: str, attempt: int, timeout: float = RPC_TIMEOUT) -> Observation:
        """What the agent says of (job_id, attempt); agent job ids are the coordinator's root ids."""
        try:
            st = self.stub(address).Inspect(apb.InspectRequest(job_id=job_id, attempt=attempt), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return Observation(kind="not_found", error=exc.details() or "")
            return Observation(kind="error", error=f"{exc.code().name}: {exc.details()}")
        return observation_from_pb(st)

    def list_live(self, address: str, timeout: float = RPC_TIMEOUT) -> dict[tuple[str, int], Observation] | None:
        """Every PENDING/RUNNING attempt an agent holds, in one call. None when the agent answered
        with an error (ask per job instead); raises grpc.RpcError when it cannot be reached."""
        try:
            r = self.stub(address).ListJobs(
                apb.ListJobsRequest(states=[pb.AGENT_JOB_STATE_PENDING, pb.AGENT_JOB_STATE_RUNNING]), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in UNREACHABLE:
                raise
            return None
        return {(st.job_id, st.attempt): observation_from_pb(st) for st in r.jobs}

    def stop(self, address: str, job_id: str, attempt: int, grace: int = 10) -> Observation:
        try:
            st = self.stub(address).Stop(apb.StopRequest(job_id=job_id, attempt=attempt, grace_seconds=grace),
                                         timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return Observation(kind="not_found", error=exc.details() or "")
            return Observation(kind="error", error=f"{exc.code().name}: {exc.details()}")
        return observation_from_pb(st)

    def acknowledge(self, address: str, job_id: str, attempt: int) -> bool:
        try:
            self.stub(address).Acknowledge(apb.AcknowledgeRequest(job_id=job_id, attempt=attempt),
                                           timeout=RPC_TIMEOUT)
            return True
        except grpc.RpcError:
            return False  # the next heartbeat carries the acknowledgement again

    def probe_dir(self, address: str, output_dir: str, total_epoch: int, val_interval: int,
                  params_json: str) -> dict[str, Any] | None:
        try:
            p = self.stub(address).ProbeOutputs(apb.ProbeOutputsRequest(
                output_dir=output_dir, total_epoch=total_epoch, val_interval=val_interval,
                params_json=params_json), timeout=RPC_TIMEOUT)
        except grpc.RpcError:
            return None
        return probe_from_pb(p)

    def close(self) -> None:
        with self._lock:
            for ch in [*self._channels.values(), *self._retired]:
                ch.close()
            self._channels.clear()
            self._retired.clear()
            self._stubs.clear()
