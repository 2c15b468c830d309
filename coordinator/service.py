"""gpufleet.v1.Coordinator and gpufleet.v1.Fleet servicers: decode, one domain call, encode."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from gpufleet.coordinator import convert
from gpufleet.coordinator.agents import AgentPool, observation_from_pb
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.fleet import Digest, Fleet
from gpufleet.coordinator.lifecycle import Lifecycle, check_job_id
from gpufleet.coordinator.reports import Entry
from gpufleet.coordinator.states import JobStatus
from gpufleet.coordinator.token_rpc import TokenAdmin
from sqlalchemy.engine import Engine

from gpufleet.agentsecret import secret_from
from gpufleet.errors import InvalidArgument, Unavailable, Upstream, rpc, rpc_stream
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc

MAX_PAGE_SIZE = 500


def _page(page: int, size: int) -> tuple[int, int]:
    if page < 0:
        raise InvalidArgument("page", f"must be >= 0, got {page}")
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument("size", f"must be between 1 and {MAX_PAGE_SIZE}, got {size}")
    return page, size or 20


class CoordinatorService(TokenAdmin, coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, engine: Engine, life: Lifecycle, agents: AgentPool) -> None:
        self.engine = engine
        self.life = life
        self.agents = agents

    def _model(self, uuid: str) -> cpb.Model:
        m = self.life.get_model(uuid)
        with self.engine.connect() as conn:
            prog = repo.get_progress(conn, [m.current_attempt_id]).get(m.current_attempt_id or "")
        return convert.model_to_pb(m, prog)

    # -- models --------------------------------------------------------------------------------
    @rpc
    def CreateModel(self, request: cpb.CreateModelRequest, context: Any) -> cpb.Model:
        m = self.life.create_model(
            model_no=request.model_no, version=request.version, train_type=request.train_type, memo=request.memo,
            params_json=request.params_json, spec=convert.spec_from_pb(request.spec), gpus=request.gpus,
            priority=request.priority, constraints=dict(request.constraints), max_retries=request.max_retries,
            lost_after_seconds=request.lost_after_seconds,
        )
        return convert.model_to_pb(m)

    @rpc
    def GetModel(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return self._model(request.uuid)

    @rpc
    def ListModels(self, request: cpb.ListModelsRequest, context: Any) -> cpb.ListModelsResponse:
        page, size = _page(request.page, request.size)
        status = convert.model_status_from_pb(request.status, "status")
        with self.engine.connect() as conn:
            p = repo.list_models(conn, status=status, model_no=request.model_no or None, page=page, size=size)
        return cpb.ListModelsResponse(items=convert.models_page_to_pb(p.items),
                                      total_elements=p.total_elements, total_pages=p.total_pages, page=page,
                                      size=size)

    @rpc
    def RunTrain(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.run_train(request.uuid))

    @rpc
    def RestartTrain(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.restart_train(request.uuid))

    @rpc
    def ResumeTrain(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.resume_train(request.uuid))

    @rpc
    def CancelTrain(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.cancel_train(request.uuid))

    @rpc
    def RunTest(self, request: cpb.RunTestRequest, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.run_test(request.uuid, request.epoch))

    @rpc
    def CancelTest(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return convert.model_to_pb(self.life.cancel_test(request.uuid))

    @rpc
    def SyncStatus(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        self.life.sync_status(request.uuid)
        return self._model(request.uuid)

    # -- jobs ----------------------------------------------------------------------------------
    @rpc
    def SubmitJob(self, request: cpb.SubmitJobRequest, context: Any) -> cpb.Job:
        job = self.life.submit_job(
            spec=convert.spec_from_pb(request.spec), gpus=request.gpus, priority=request.priority,
            constraints=dict(request.constraints), max_retries=request.max_retries,
            resume_on_retry=request.resume_on_retry, name=request.name, request_id=request.request_id,
            lost_after_seconds=request.lost_after_seconds,
        )
        return convert.job_to_pb(job)

    @rpc
    def GetJob(self, request: cpb.JobRef, context: Any) -> cpb.Job:
        job = self.life.get_job(request.job_id)
        with self.engine.connect() as conn:
            prog = repo.get_progress(conn, [job.id]).get(job.id)
        return convert.job_to_pb(job, prog)

    @rpc
    def ListJobs(self, request: cpb.ListJobsQuery, context: Any) -> cpb.ListJobsPage:
        page, size = _page(request.page, request.size)
        status = convert.job_status_from_pb(request.status, "status")
        with self.engine.connect() as conn:
            p = repo.list_jobs(conn, status=status, model_uuid=request.model_uuid or None,
                               node=request.node or None, page=page, size=size)
        return cpb.ListJobsPage(jobs=convert.jobs_page_to_pb(p.items), total_elements=p.total_elements,
                                total_pages=p.total_pages)

    @rpc
    def CancelJob(self, request: cpb.JobRef, context: Any) -> cpb.Job:
        return convert.job_to_pb(self.life.cancel_job(request.job_id))

    @rpc_stream
    def StreamJobLogs(self, request: apb.StreamLogsRequest, context: Any) -> Iterator[apb.LogChunk]:
        check_job_id(request.job_id)
        if request.tail_lines < 0:
            raise InvalidArgument("tail_lines", f"must be >= 0, got {request.tail_lines}")
        job = self.life.get_job(request.job_id)
        if not job.node:
            return  # still queued: no output yet
        with self.engine.connect() as conn:
            address = repo.get_node(conn, job.node).address
            stored = repo.get_log_tail(conn, job.id) if job.terminal else None
        if stored is not None:
            # Ended and stored: serve the database's copy (the agent may have forgotten the job).
            yield apb.LogChunk(data=_tail(stored, request.tail_lines))
            return
        follow = request.follow and job.status is JobStatus.RUNNING
        stream = self.agents.stub(address).StreamLogs(
            apb.StreamLogsRequest(job_id=job.root_id, attempt=job.attempt, follow=follow,
                                  tail_lines=request.tail_lines),
            timeout=None if follow else 30)
        try:
            for chunk in stream:
                yield chunk
                if not context.is_active():
                    stream.cancel()
                    return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"job {job.id}: the agent on {job.node} no longer holds its logs") from None
            raise Unavailable(f"job {job.id}: cannot reach the agent on {job.node}: {exc.code().name}") from None

    @rpc
    def GetJobMetrics(self, request: cpb.JobRef, context: Any) -> cpb.JobMetrics:
        job = self.life.get_job(request.job_id)
        with self.engine.connect() as conn:
            points = repo.get_job_metrics(conn, job.id)
            best = 0
            if job.model_uuid:
                m = repo.get_model(conn, job.model_uuid)
                best = m.best_epoch or 0 if m.current_attempt_id == job.id or job.job_type.value == "TRAIN" else 0
        return cpb.JobMetrics(job_id=job.id, rows=convert.metrics_to_pb(points), best_epoch=best)

    # -- fleet ---------------------------------------------------------------------------------
    @rpc
    def ListNodes(self, request: cpb.ListNodesRequest, context: Any) -> cpb.ListNodesResponse:
        with self.engine.connect() as conn:
            nodes = repo.list_nodes(conn)
            running = {n.name: len(repo.jobs_on_node(conn, n.name)) for n in nodes}
        return cpb.ListNodesResponse(nodes=[convert.node_to_pb(n, running[n.name]) for n in nodes])

    def _node(self, name: str) -> cpb.Node:
        with self.engine.connect() as conn:
            n = repo.get_node(conn, name)
            return convert.node_to_pb(n, len(repo.jobs_on_node(conn, name)))

    @rpc
    def DrainNode(self, request: cpb.NodeRef, context: Any) -> cpb.Node:
        self.life.drain(request.name, True)
        return self._node(request.name)

    @rpc
    def UndrainNode(self, request: cpb.NodeRef, context: Any) -> cpb.Node:
        self.life.drain(request.name, False)
        return self._node(request.name)

    @rpc
    def StageDataset(self, request: cpb.CoordinatorStageRequest, context: Any) -> apb.StageDatasetResponse:
        name, address = self.life.stage_dataset(request.uuid, request.node)
        try:
            r = self.agents.stub(address).StageDataset(
                apb.StageDatasetRequest(stage_id=request.uuid, links=request.links), timeout=120)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                              grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise Upstream(exc.code(), f"node {name}: {exc.details()}") from None
            raise Unavailable(f"StageDataset: cannot reach node {name}: {exc.code().name}") from None
        with self.engine.begin() as conn:
            repo.set_dataset_counts(conn, request.uuid, dict(r.counts), name)
        return r

    @rpc
    def DatasetCounts(self, request: cpb.ModelRef, context: Any) -> cpb.DatasetCountsResponse:
        self.life.get_model(request.uuid)
        with self.engine.connect() as conn:
            counts = repo.get_dataset_counts(conn, request.uuid)
        return cpb.DatasetCountsResponse(uuid=request.uuid, counts=counts, total=sum(counts.values()))


def _tail(data: bytes, lines: int) -> bytes:
    return data if lines <= 0 else b"".join(data.splitlines(keepends=True)[-lines:])


class FleetService(coordinator_pb2_grpc.FleetServicer):
    def __init__(self, fleet: Fleet, agents: AgentPool | None = None) -> None:
        self.fleet = fleet
        self.agents = agents

    @rpc
    def Register(self, request: cpb.RegisterRequest, context: Any) -> cpb.RegisterResponse:
        interval = self.fleet.register(request.node_name, request.address, dict(request.labels),
                                       request.agent_version, request.runtime,
                                       [convert.gpu_from_pb(g) for g in request.gpus])
        if self.agents is not None:  # a plaintext agent's control secret: used on every call to it
            self.agents.remember_secret(request.address, secret_from(context.invocation_metadata()))
        return cpb.RegisterResponse(node_name=request.node_name, heartbeat_interval_seconds=interval)

    @rpc
    def Heartbeat(self, request: cpb.HeartbeatRequest, context: Any) -> cpb.HeartbeatResponse:
        for i, d in enumerate(request.jobs):
            if d.state not in pb.AgentJobState.values() or d.state == pb.AGENT_JOB_STATE_UNSPECIFIED:
                raise InvalidArgument(f"jobs[{i}].state", f"unknown agent job state {d.state}")
        digests = [Digest(d.job_id, d.attempt, convert.agent_state_name(d.state)) for d in request.jobs]
        a = self.fleet.heartbeat(request.node_name, [convert.gpu_from_pb(g) for g in request.gpus], digests)

        def pbd(d: Digest) -> cpb.JobDigest:
            return cpb.JobDigest(job_id=d.job_id, attempt=d.attempt,
                                 state=pb.AgentJobState.Value("AGENT_JOB_STATE_" + d.state))  # type: ignore[arg-type]

        return cpb.HeartbeatResponse(stop=[pbd(d) for d in a.stop], acknowledged=[pbd(d) for d in a.acknowledged],
                                     reregister=a.reregister)


    @rpc
    def Report(self, request: cpb.ReportRequest, context: Any) -> cpb.ReportResponse:
        entries = [
            Entry(seq=r.seq, kind=r.kind, job_id=r.job.job_id, attempt=r.job.attempt,
                  obs=observation_from_pb(r.job), metrics=[(m.split, m.epoch, dict(m.values)) for m in r.metrics],
                  metric_rows=r.metric_rows)
            for r in request.reports
        ]
        applied = self.fleet.report(request.node_name, entries)
        if applied is None:
            return cpb.ReportResponse(reregister=True)
        return cpb.ReportResponse(acked_seq=applied.acked_seq, acknowledged=[
            cpb.JobDigest(job_id=j, attempt=a) for j, a in applied.acknowledged])


def add_to_server(coord: CoordinatorService, fleet: FleetService, server: grpc.Server) -> None:
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(coord, server)
    coordinator_pb2_grpc.add_FleetServicer_to_server(fleet, server)
