"""gpufleet.v1.Coordinator and gpufleet.v1.Fleet servicers: decode, one domain call, encode."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from gpufleet.coordinator import convert, tenancy, usage
from gpufleet.coordinator.agents import AgentPool, observation_from_pb
from gpufleet.coordinator.caller import caller_name
from gpufleet.coordinator.db import options, quotas, repo
from gpufleet.coordinator.db import tokens as owners
from gpufleet.coordinator.db import usage as usage_db
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.download_rpc import OutputDownloads
from gpufleet.coordinator.fairshare import over_quota
from gpufleet.coordinator.fleet import Digest, Fleet
from gpufleet.coordinator.lifecycle import MAX_GPUS, Lifecycle, check_job_id
from gpufleet.coordinator.pending import Pending, PendingCode, capacities, held_by_options, never_fits, pending_reason
from gpufleet.coordinator.quota_rpc import QuotaAdmin
from gpufleet.coordinator.reports import Entry
from gpufleet.coordinator.states import JobStatus
from gpufleet.coordinator.token_rpc import TokenAdmin
from gpufleet.coordinator.workflows import JobRequest, Workflows
from sqlalchemy.engine import Engine

from gpufleet.agentsecret import secret_from
from gpufleet.auth import caller
from gpufleet.errors import FailedPrecondition, InvalidArgument, Unavailable, Upstream, rpc, rpc_stream
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc

MAX_PAGE_SIZE = 500
# How often a follow on a queued job looks whether it has started.
FOLLOW_POLL_S = 0.25


def _page(page: int, size: int) -> tuple[int, int]:
    if page < 0:
        raise InvalidArgument("page", f"must be >= 0, got {page}")
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument("size", f"must be between 1 and {MAX_PAGE_SIZE}, got {size}")
    return page, size or 20


def job_holds(conn: Any, queued: Sequence[JobRow], opts: dict[str, options.JobOptions]) -> dict[str, Pending]:
    """Queued jobs held back by their options (dependencies, array cap): job id -> why."""
    mine = [(r, opts[r.root_id]) for r in queued if r.root_id in opts]
    if not mine:
        return {}
    statuses = options.latest_status(conn, {d for _, o in mine for d in o.depends_on})
    running = options.running_in_arrays(conn, {o.array_id for _, o in mine if o.array_id})
    out = {}
    for r, o in mine:
        why = held_by_options(o, statuses, running.get(o.array_id or "", 0))
        if why is not None:
            out[r.id] = why
    return out


def quota_holds(conn: Any, queued: Sequence[JobRow]) -> dict[str, Pending]:
    """Queued jobs whose owner's quota holds them back: job id -> why (QUOTA)."""
    caps = quotas.quota_map(conn) if queued else {}
    if not caps:
        return {}
    owner = quotas.owners_of(conn, [r.id for r in queued])
    used = quotas.held_gpus(conn)
    out = {}
    for r in queued:
        why = over_quota(owner.get(r.id, ""), r.gpus, used, caps)
        if why is not None:
            out[r.id] = why
    return out


def job_request(r: cpb.SubmitJobRequest) -> JobRequest:
    return JobRequest(owner=caller_name(), spec=convert.spec_from_pb(r.spec), gpus=r.gpus, priority=r.priority,
                      constraints=dict(r.constraints), max_retries=r.max_retries, resume_on_retry=r.resume_on_retry,
                      name=r.name, depends_on=tuple(r.depends_on), dependency_mode=r.dependency_mode,
                      time_limit_s=r.time_limit_seconds, lost_after_seconds=r.lost_after_seconds)


def check_auto_test(value: str) -> str:
    if value in ("", "best") or (value.isdigit() and 1 <= int(value) <= 1_000_000):
        return value
    raise InvalidArgument("auto_test", f"must be empty, 'best' or an epoch number >= 1, got {value!r}")


class CoordinatorService(TokenAdmin, QuotaAdmin, OutputDownloads, coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, engine: Engine, life: Lifecycle, agents: AgentPool) -> None:
        self.engine = engine
        self.life = life
        self.agents = agents
        self.flows = Workflows(life)

    def _model(self, uuid: str, redact: bool = True) -> cpb.Model:
        m = self.life.get_model(uuid)
        with self.engine.connect() as conn:
            prog = repo.get_progress(conn, [m.current_attempt_id]).get(m.current_attempt_id or "")
            opts = options.get_model_options(conn, [uuid]).get(uuid)
        out = convert.model_to_pb(m, prog)
        out.auto_test = opts.auto_test if opts else ""
        return self._redact_models([out])[0] if redact else out

    # -- tenants (coordinator/tenancy.py) ----------------------------------------------------------
    def _owns_model(self, uuid: str) -> bool:
        who = caller()
        with self.engine.connect() as conn:
            return who is not None and owners.get_owner(conn, "model", uuid) == who.name

    def _scoped(self, req: JobRequest) -> JobRequest:
        return dataclasses.replace(req, spec=tenancy.scope_spec(req.spec, caller(), self._owns_model))

    def _redact_models(self, out: list[cpb.Model]) -> list[cpb.Model]:
        who = caller()
        if not tenancy.scoped(who):
            return out
        with self.engine.connect() as conn:
            by = owners.owners_of(conn, "model", [m.uuid for m in out])
        for m in out:
            if not tenancy.may_see_secrets(who, by.get(m.uuid)):
                tenancy.redact_env(m.spec)
        return out

    def _redact_jobs(self, rows: Sequence[JobRow], out: list[cpb.Job]) -> list[cpb.Job]:
        who = caller()
        if not tenancy.scoped(who):
            return out
        with self.engine.connect() as conn:
            by = owners.job_owners(conn, [(r.id, r.model_uuid, r.root_id) for r in rows])
        for r, j in zip(rows, out, strict=True):
            if not tenancy.may_see_secrets(who, by.get(r.id)):
                tenancy.redact_env(j.spec)
        return out

    # -- models --------------------------------------------------------------------------------
    @rpc
    def CreateModel(self, request: cpb.CreateModelRequest, context: Any) -> cpb.Model:
        auto_test = check_auto_test(request.auto_test)
        m = self.life.create_model(
            model_no=request.model_no, version=request.version, train_type=request.train_type, memo=request.memo,
            params_json=request.params_json, gpus=request.gpus,
            spec=tenancy.scope_spec(convert.spec_from_pb(request.spec), caller(), self._owns_model,
                                    default_output="models"),
            priority=request.priority, constraints=dict(request.constraints), max_retries=request.max_retries,
            lost_after_seconds=request.lost_after_seconds,
        )
        if auto_test:
            with self.engine.begin() as conn:
                options.save_model_options(conn, m.uuid, auto_test=auto_test, time_limit_s=None)
        return self._model(m.uuid, redact=False)  # the creator's (its owner is recorded after the answer)

    @rpc
    def GetModel(self, request: cpb.ModelRef, context: Any) -> cpb.Model:
        return self._model(request.uuid)

    @rpc
    def ListModels(self, request: cpb.ListModelsRequest, context: Any) -> cpb.ListModelsResponse:
        page, size = _page(request.page, request.size)
        status = convert.model_status_from_pb(request.status, "status")
        with self.engine.connect() as conn:
            p = repo.list_models(conn, status=status, model_no=request.model_no or None, page=page, size=size)
        return cpb.ListModelsResponse(items=self._redact_models(convert.models_page_to_pb(p.items)),
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
    def _capacities(self) -> list[Any]:
        with self.engine.connect() as conn:
            return capacities(repo.list_nodes(conn), repo.gpus_in_use(conn))

    def _with_reasons(self, rows: Sequence[JobRow], out: list[cpb.Job]) -> list[cpb.Job]:
        """Each job with its options, and each QUEUED one with why it waits, read now (a few reads
        per answer, not per job)."""
        waiting = [r for r in rows if r.status is JobStatus.QUEUED]
        with self.engine.connect() as conn:
            opts = options.get_job_options(conn, [r.root_id for r in rows])
            held = job_holds(conn, waiting, opts)
            capped = quota_holds(conn, waiting)
        queued = [(r, j) for r, j in zip(rows, out, strict=True) if r.status is JobStatus.QUEUED]
        caps = self._capacities() if queued else []
        for r, j in zip(rows, out, strict=True):
            o = opts.get(r.root_id)
            if o is not None:
                convert.job_options_to_pb(o, j)
        for r, j in queued:
            why = held.get(r.id) or pending_reason(r.gpus, r.constraints, caps)
            if why.code in (PendingCode.PRIORITY, PendingCode.GPUS_BUSY) and r.id in capped:
                why = capped[r.id]  # it fits the fleet: what holds it is its owner's quota
            j.pending_code, j.pending_reason = why.code.value, why.message
        return out

    @rpc
    def SubmitJob(self, request: cpb.SubmitJobRequest, context: Any) -> cpb.Job:
        # Bad input first (the lifecycle names the field); then what the fleet could ever run.
        if not request.wait_for_capacity and 0 <= request.gpus <= MAX_GPUS:
            never = never_fits(request.gpus, dict(request.constraints), self._capacities())
            if never is not None:
                raise FailedPrecondition(f"gpus: no node could ever run this job: {never.message}; "
                                         "set wait_for_capacity (CLI: --wait-for-capacity) to queue it anyway")
        job = self.flows.submit_job(self._scoped(job_request(request)), request_id=request.request_id)
        return self._with_reasons([job], [convert.job_to_pb(job)])[0]

    # -- arrays and pipelines -----------------------------------------------------------------------
    def _array(self, array_id: str, found: Sequence[tuple[JobRow, Any]]) -> cpb.JobArray:
        rows = [j for j, _ in found]
        jobs = self._with_reasons(rows, [convert.job_to_pb(j) for j in rows])
        return cpb.JobArray(array_id=array_id, jobs=self._redact_jobs(rows, jobs))

    @rpc
    def SubmitArray(self, request: cpb.SubmitArrayRequest, context: Any) -> cpb.JobArray:
        array_id, made = self.flows.submit_array(self._scoped(job_request(request.job)), request.count,
                                                 request.max_running,
                                                 list(request.params))
        return self._array(array_id, [(j, None) for j in made])

    @rpc
    def GetArray(self, request: cpb.ArrayRef, context: Any) -> cpb.JobArray:
        return self._array(request.array_id, self.flows.get_array(request.array_id))

    @rpc
    def CancelArray(self, request: cpb.ArrayRef, context: Any) -> cpb.JobArray:
        return self._array(request.array_id, self.flows.cancel_array(request.array_id))

    def _pipeline(self, pipeline_id: str, got: tuple[str, str, list[tuple[JobRow, Any]]]) -> cpb.Pipeline:
        name, state, steps = got
        rows = [j for j, _ in steps]
        jobs = {j.job_id: j for j in self._with_reasons(rows, [convert.job_to_pb(j) for j in rows])}
        step_of = {o.root_id: o.step for _, o in steps}
        out = cpb.Pipeline(pipeline_id=pipeline_id, name=name, state=state)
        for j, o in steps:
            pj = jobs[j.id]
            out.steps.add(name=o.step or "", job_id=j.id, status_name=j.status.value, shadow=o.shadow,
                          after=[step_of.get(d, d) for d in o.depends_on],
                          reason=pj.pending_reason or (j.error_message if j.terminal else ""))
        return out

    @rpc
    def SubmitPipeline(self, request: cpb.SubmitPipelineRequest, context: Any) -> cpb.Pipeline:
        steps = [(s.name, self._scoped(job_request(s.job)), list(s.after), s.shadow) for s in request.steps]
        pipeline_id = self.flows.submit_pipeline(request.name, steps)
        return self._pipeline(pipeline_id, self.flows.get_pipeline(pipeline_id))

    @rpc
    def GetPipeline(self, request: cpb.PipelineRef, context: Any) -> cpb.Pipeline:
        return self._pipeline(request.pipeline_id, self.flows.get_pipeline(request.pipeline_id))

    @rpc
    def CancelPipeline(self, request: cpb.PipelineRef, context: Any) -> cpb.Pipeline:
        return self._pipeline(request.pipeline_id, self.flows.cancel_pipeline(request.pipeline_id))

    @rpc
    def GetJob(self, request: cpb.JobRef, context: Any) -> cpb.Job:
        job = self.life.get_job(request.job_id)
        with self.engine.connect() as conn:
            prog = repo.get_progress(conn, [job.id]).get(job.id)
            used = usage_db.get_usage(conn, [job.id]).get(job.id)
        out = self._with_reasons([job], [convert.job_to_pb(job, prog)])[0]
        if used is not None:
            convert.job_usage_to_pb(used, out)
        return self._redact_jobs([job], [out])[0]

    @rpc
    def ListJobs(self, request: cpb.ListJobsQuery, context: Any) -> cpb.ListJobsPage:
        page, size = _page(request.page, request.size)
        status = convert.job_status_from_pb(request.status, "status")
        with self.engine.connect() as conn:
            p = repo.list_jobs(conn, status=status, model_uuid=request.model_uuid or None,
                               node=request.node or None, page=page, size=size)
        jobs = self._redact_jobs(p.items, self._with_reasons(p.items, convert.jobs_page_to_pb(p.items)))
        return cpb.ListJobsPage(jobs=jobs,
                                total_elements=p.total_elements,
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
        if not job.node and request.follow:
            job = self._wait_placed(job, context)  # as `kubectl logs -f` waits for a pending pod
        if not job.node:
            return  # still queued (no output yet), or ended without ever starting
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

    def _wait_placed(self, job: JobRow, context: Any) -> JobRow:
        """The job once it has a node or has ended, polled while the caller still listens."""
        while job.status is JobStatus.QUEUED and not job.node and context.is_active():
            time.sleep(FOLLOW_POLL_S)
            job = self.life.get_job(job.id)
        return job

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

    @rpc
    def GetUsage(self, request: cpb.UsageQuery, context: Any) -> cpb.UsageReport:
        with self.engine.connect() as conn:
            summary = usage.summarize(conn, request.since_seconds, request.by)
        return cpb.UsageReport(since=convert.ts(summary.since), by=summary.by,
                               rows=[convert.usage_sum_to_pb(r) for r in summary.rows],
                               total=convert.usage_sum_to_pb(summary.total))

    # -- fleet ---------------------------------------------------------------------------------
    @rpc
    def ListNodes(self, request: cpb.ListNodesRequest, context: Any) -> cpb.ListNodesResponse:
        with self.engine.connect() as conn:
            nodes = repo.list_nodes(conn)
            running = {n.name: len(repo.jobs_on_node(conn, n.name)) for n in nodes}
        return cpb.ListNodesResponse(nodes=[convert.node_to_pb(n, running[n.name], self.agents.problems.get(n.address))
                                            for n in nodes])

    def _node(self, name: str) -> cpb.Node:
        with self.engine.connect() as conn:
            n = repo.get_node(conn, name)
            return convert.node_to_pb(n, len(repo.jobs_on_node(conn, name)), self.agents.problems.get(n.address))

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
        who = caller()
        if tenancy.scoped(who):
            assert who is not None
            for i, link in enumerate(request.links):
                for part in ("input1", "input2", "label", "label_json"):
                    if getattr(link, part):
                        tenancy.check_readable(getattr(link, part), f"links[{i}].{part}", who)
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
        for i, r in enumerate(request.reports):
            if r.job.state not in pb.AgentJobState.values():
                raise InvalidArgument(f"reports[{i}].job.state", f"unknown agent job state {r.job.state}")
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
