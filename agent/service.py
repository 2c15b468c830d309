"""gpufleet.v1.Agent servicer: decode, one call into the supervisor, encode. No rules live here."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
from gpufleet.agent import convert, outputs, staging
from gpufleet.agent.gpus import GpuMonitor
from gpufleet.agent.supervisor import Supervisor

from gpufleet import __version__
from gpufleet.errors import InvalidArgument, rpc, rpc_stream
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb

LOG_CHUNK = 1024 * 1024
DEFAULT_GRACE = 10


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, sup: Supervisor, gpus: GpuMonitor, node_name: str) -> None:
        self.sup = sup
        self.gpus = gpus
        self.node_name = node_name
        self.started = time.time()

    @rpc
    def Launch(self, request: apb.LaunchRequest, context: Any) -> pb.JobStatus:
        # `owner` is taken as sent: only the coordinator can call Launch (mTLS with its certificate, or
        # on a plaintext loopback the control secret it got at Register; agent/control.py), and the
        # coordinator sets it from the authenticated submitter. Each owner's jobs get its own uid.
        job = self.sup.launch(request.job_id, request.attempt, convert.spec_from_pb(request.spec),
                              list(request.gpu_indices), owner=request.owner)
        return convert.job_to_pb(job)

    @rpc
    def Stop(self, request: apb.StopRequest, context: Any) -> pb.JobStatus:
        left = context.time_remaining() if context is not None else None
        wait = 10.0 if left is None else max(0.0, min(10.0, left - 0.5))
        job = self.sup.stop(request.job_id, request.grace_seconds or DEFAULT_GRACE, request.attempt, wait=wait)
        return convert.job_to_pb(job)

    @rpc
    def Inspect(self, request: apb.InspectRequest, context: Any) -> pb.JobStatus:
        return convert.job_to_pb(self.sup.inspect(request.job_id, request.attempt), with_log=True)

    @rpc
    def ListJobs(self, request: apb.ListJobsRequest, context: Any) -> apb.ListJobsResponse:
        states = []
        for i, s in enumerate(request.states):
            if s == pb.AGENT_JOB_STATE_UNSPECIFIED or s not in pb.AgentJobState.values():
                raise InvalidArgument(f"states[{i}]", f"unknown job state {s}")
            states.append(convert.state_from_pb(s))
        jobs = self.sup.jobs(states or None)
        return apb.ListJobsResponse(jobs=[convert.job_to_pb(j, with_metrics=False) for j in jobs])

    @rpc_stream
    def WatchEvents(self, request: apb.WatchEventsRequest, context: Any) -> Iterator[apb.JobEvent]:
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", f"must be >= 0, got {request.after_seq}")
        seq = request.after_seq
        while context.is_active():
            evs = self.sup.events_after(seq, timeout=0 if request.no_follow else 1.0)
            if not evs and request.no_follow:
                return
            for ev in evs:
                job = self.sup.store.find(ev.job_id, ev.attempt)
                if job is not None:
                    status = convert.job_to_pb(job)
                else:  # acknowledged and dropped since: the event still says what happened
                    status = pb.JobStatus(job_id=ev.job_id, attempt=ev.attempt, acknowledged=True,
                                          state=pb.AgentJobState.Value("AGENT_JOB_STATE_" + ev.payload["state"]))
                yield apb.JobEvent(seq=ev.seq, time=convert.ts(ev.at), kind=ev.kind, job=status)
                seq = ev.seq

    @rpc_stream
    def StreamLogs(self, request: apb.StreamLogsRequest, context: Any) -> Iterator[apb.LogChunk]:
        for data in self.sup.logs(request.job_id, request.follow, request.tail_lines, request.attempt):
            for i in range(0, len(data), LOG_CHUNK):
                yield apb.LogChunk(data=data[i : i + LOG_CHUNK])
            if not context.is_active():
                return

    @rpc_stream
    def ReadOutput(self, request: apb.ReadOutputRequest, context: Any) -> Iterator[apb.OutputChunk]:
        chunks = outputs.read_output(self.sup.roots.output_root, request.output_dir, request.path,
                                     request.max_bytes)
        for i, (data, size) in enumerate(chunks):
            yield apb.OutputChunk(data=data, size=size if i == 0 else 0)
            if not context.is_active():
                return

    @rpc
    def ProbeOutputs(self, request: apb.ProbeOutputsRequest, context: Any) -> pb.ProbeResult:
        if request.best_metric_mode not in ("", "min", "max"):
            raise InvalidArgument("best_metric_mode", f"must be 'min' or 'max', got {request.best_metric_mode!r}")
        if request.job_id:
            v = self.sup.probe_job(request.job_id, request.best_metric_key, request.best_metric_mode)
        elif request.output_dir:
            v = self.sup.probe_dir(request.output_dir, request.total_epoch, request.val_interval,
                                   request.params_json, request.best_metric_key, request.best_metric_mode)
        else:
            raise InvalidArgument("job_id", "give job_id or output_dir")
        return convert.probe_to_pb(v) or pb.ProbeResult()

    @rpc
    def GetNode(self, request: apb.GetNodeRequest, context: Any) -> apb.NodeInfo:
        return self.node_info()

    def node_info(self) -> apb.NodeInfo:
        samples, sampled_at = self.gpus.latest()
        held = self.sup.held_gpus()
        jobs = self.sup.jobs()
        return apb.NodeInfo(
            hostname=socket.gethostname(), agent_version=__version__, runtime=self.sup.runtime.name,
            uptime_seconds=time.time() - self.started,
            gpus=[convert.gpu_to_pb(g, held.get(g.index, "")) for g in samples],
            gpu_source=self.gpus.source.kind, node_name=self.node_name, jobs_held=len(jobs),
            jobs_running=sum(1 for j in jobs if j.live), gpus_sampled_at=convert.ts(sampled_at),
            last_event_seq=self.sup.store.last_seq(),
        )

    @rpc
    def StageDataset(self, request: apb.StageDatasetRequest, context: Any) -> apb.StageDatasetResponse:
        links = [staging.StageLinkSpec(split=lk.split, dataset_id=lk.dataset_id, input1=lk.input1,
                                       input2=lk.input2, label=lk.label, label_json=lk.label_json)
                 for lk in request.links]
        r = staging.stage_dataset(self.sup.roots.data_root, request.stage_id, links)
        return apb.StageDatasetResponse(stage_dir=str(r.stage_dir), made=r.made, skipped=r.skipped,
                                        extracted=r.extracted, counts=r.counts, warnings=r.warnings)

    @rpc
    def Acknowledge(self, request: apb.AcknowledgeRequest, context: Any) -> apb.AcknowledgeResponse:
        return apb.AcknowledgeResponse(dropped=self.sup.acknowledge(request.job_id, request.attempt))

    @rpc
    def SetGpuHealth(self, request: apb.SetGpuHealthRequest, context: Any) -> pb.GpuInfo:
        g = self.gpus.set_health(request.index, request.healthy, request.reason)
        return convert.gpu_to_pb(g, self.sup.held_gpus().get(g.index, ""))


def add_to_server(service: AgentService, server: grpc.Server) -> None:
    agent_pb2_grpc.add_AgentServicer_to_server(service, server)
