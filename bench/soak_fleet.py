"""The soak's fleet: 100 fake agents with a fake runtime (jobs that end by themselves, a job table keyed
like the real agent's store, and the two ways of being unreachable), and the ground truth they keep
(`Run`) that the database is judged against. Used by bench/soak.py.
"""
from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import grpc

from bench import _harness
from bench import fakefleet as cb
from gpufleet.server import CHANNEL_OPTIONS
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

RUNNING, SUCCEEDED, STOPPED = cb.RUNNING, cb.SUCCEEDED, cb.STOPPED
LIVE = cb.LIVE
AGENT_RPC_TIMEOUT = 5.0  # what agent/registrar.py gives Register and Heartbeat
NODE_LOSS = ("NODE_LOST", "SERVER_RESTART_CONTAINER_INSPECT_ERROR")  # verdicts reached without the agent
RECORD_GRACE_S = 6.0  # heartbeat answer -> the end it reported is in the database (Inspect deadline 5 s + 1)
TERMINAL = ("SUCCESS", "FAILED", "STOPPED", "CANCELED")
JOB_NAME = "soak-{:07d}"


class SoakError(_harness.BenchError):
    pass


def wall() -> float:
    return time.time()


def stats(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0, "p50_s": None, "p99_s": None, "max_s": None}
    return {"n": len(xs), "p50_s": round(_harness.percentile(xs, 50), 3),
            "p99_s": round(_harness.percentile(xs, 99), 3), "max_s": round(max(xs), 3)}


# ---- fake agents with a fake runtime ----------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """One attempt "running" on one fake agent: the ground truth the database is judged against."""

    root: str
    attempt: int
    node: str
    start: float  # wall clock, comparable with the database's timestamps (same host)
    end: float | None = None
    how: str = ""  # completed | stopped (Agent.Stop) | fenced (heartbeat answer)


@dataclass(eq=False)
class Rec:
    st: pb.JobStatus
    run: Run


class SoakAgent(cb.FakeAgent):
    """bench/fakefleet.py's FakeAgent with a job table keyed like the real agent's store
    ((job_id, attempt), max attempt per job, GPU holds), jobs that end by themselves, and the two
    ways of being unreachable: down (server stopped) and cut off (calls hang until their deadline)."""

    def __init__(self, farm: SoakFarm, name: str, gpus: int) -> None:
        super().__init__(farm, name, gpus)
        self.farm: SoakFarm = farm
        self.jobs: dict[tuple[str, int], Rec] = {}  # type: ignore[assignment]
        self.max_attempt: dict[str, int] = {}
        self.holds: dict[int, tuple[str, int]] = {}
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.down = False
        self.cut = False
        self.reachable = asyncio.Event()
        self.reachable.set()
        self.wake = asyncio.Event()
        # (sent, answered) wall times of every heartbeat the coordinator answered (not `reregister`)
        self.hb_sent: list[float] = []
        self.hb_answered: list[float] = []

    # -- the network ----------------------------------------------------------------------------
    async def _gate(self, context: Any, method: str) -> None:
        """Cut off: the call hangs until its deadline, or goes through late when healed before."""
        if not self.cut:
            return
        self.farm.blackholed[method] += 1
        remaining = context.time_remaining()
        try:
            await asyncio.wait_for(self.reachable.wait(), remaining)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "soak: partitioned")

    # -- job table ------------------------------------------------------------------------------
    def _newest(self, job_id: str) -> Rec | None:
        recs = [r for (j, _), r in self.jobs.items() if j == job_id]
        return max(recs, key=lambda r: r.st.attempt) if recs else None

    def _find(self, job_id: str, attempt: int) -> Rec | None:
        return self.jobs.get((job_id, attempt)) if attempt else self._newest(job_id)

    def end(self, rec: Rec, state: Any, how: str) -> None:
        st = rec.st
        st.state = state
        st.exit_code = 0 if state == SUCCEEDED else -1
        if state == STOPPED:
            st.stop_requested = True
        st.finished_at.CopyFrom(cb.now_ts())
        for g in st.gpu_indices:
            if self.holds.get(g) == (st.job_id, st.attempt):
                del self.holds[g]
        rec.run.end = wall()
        rec.run.how = how

    async def _refuse(self, context: Any, code: grpc.StatusCode, kind: str, detail: str) -> None:
        self.farm.refused[kind] += 1
        await context.abort(code, detail)

    # -- gpufleet.v1.Agent ----------------------------------------------------------------------
    async def Launch(self, request: apb.LaunchRequest, context: Any) -> pb.JobStatus:
        await self._gate(context, "Launch")
        farm = self.farm
        farm.launch_calls += 1
        job_id, attempt = request.job_id, request.attempt
        rec = self.jobs.get((job_id, attempt))
        if rec is not None:
            farm.duplicate_launches += 1
            return rec.st  # idempotent on (job_id, attempt)
        top = self.max_attempt.get(job_id, 0)
        if attempt < top:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "older attempt",
                               f"job {job_id}: attempt {attempt} is older than attempt {top} already given "
                               "to this agent (stale attempts are never started)")
        live = [r for (j, a), r in self.jobs.items() if j == job_id and r.st.state in LIVE]
        if live:
            await self._refuse(context, grpc.StatusCode.ABORTED, "another attempt live",
                               f"job {job_id}: attempt {live[0].st.attempt} is still "
                               f"{pb.AgentJobState.Name(live[0].st.state)}; stop it before launching "
                               f"attempt {attempt}")
        if attempt == top:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "already acknowledged",
                               f"job {job_id}: attempt {attempt} already ran on this agent and was acknowledged")
        for g in request.gpu_indices:
            if not 0 <= g < len(self.gpus):
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no such GPU", f"no GPU {g}")
            if g in self.holds:
                held = self.holds[g]
                await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "GPU held",
                                   f"gpu_indices: GPU {g} is held by job {held[0]} attempt {held[1]}")
        ts = cb.now_ts()
        st = pb.JobStatus(job_id=job_id, attempt=attempt, state=RUNNING, created_at=ts, started_at=ts,
                          gpu_indices=request.gpu_indices, runtime="fake", runtime_id=f"fake-{job_id}-{attempt}",
                          output_dir=request.spec.output_dir, job_type=request.spec.job_type)
        run = farm.start_run(job_id, attempt, self.name)
        rec = Rec(st, run)
        self.jobs[(job_id, attempt)] = rec
        self.max_attempt[job_id] = attempt
        for g in request.gpu_indices:
            self.holds[g] = (job_id, attempt)
        farm.schedule_end(self, rec)
        return st

    async def Inspect(self, request: apb.InspectRequest, context: Any) -> pb.JobStatus:
        await self._gate(context, "Inspect")
        self.farm.inspect_calls += 1
        rec = self._find(request.job_id, request.attempt)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id!r} is not known to this agent")
        assert rec is not None
        return rec.st

    async def Stop(self, request: apb.StopRequest, context: Any) -> pb.JobStatus:
        await self._gate(context, "Stop")
        rec = self._find(request.job_id, request.attempt)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id!r} is not known to this agent")
        assert rec is not None
        if rec.st.state in LIVE:
            self.farm.stop_calls += 1
            self.end(rec, STOPPED, "stopped")
        return rec.st

    async def Acknowledge(self, request: apb.AcknowledgeRequest, context: Any) -> apb.AcknowledgeResponse:
        await self._gate(context, "Acknowledge")
        rec = self.jobs.get((request.job_id, request.attempt))
        if rec is not None and rec.st.state in LIVE:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {request.job_id} attempt {request.attempt} is still running")
        return apb.AcknowledgeResponse(dropped=self.forget(request.job_id, request.attempt))

    async def ListJobs(self, request: apb.ListJobsRequest, context: Any) -> apb.ListJobsResponse:
        await self._gate(context, "ListJobs")
        want = set(request.states)
        return apb.ListJobsResponse(jobs=[r.st for r in self.jobs.values() if not want or r.st.state in want])

    async def GetNode(self, request: apb.GetNodeRequest, context: Any) -> apb.NodeInfo:
        await self._gate(context, "GetNode")
        running = sum(1 for r in self.jobs.values() if r.st.state in LIVE)
        return apb.NodeInfo(hostname=self.name, agent_version=cb.AGENT_VERSION, runtime="process",
                            uptime_seconds=time.monotonic() - self.started, gpus=self.gpus, gpu_source="fake",
                            node_name=self.name, jobs_held=len(self.jobs), jobs_running=running)

    async def ProbeOutputs(self, request: apb.ProbeOutputsRequest, context: Any) -> pb.ProbeResult:
        # Asked only when the coordinator believes the agent forgot an attempt it had seen running:
        # the fake runtime writes no outputs.
        await self._gate(context, "ProbeOutputs")
        self.farm.probe_calls += 1
        return pb.ProbeResult(completed=False, reason="output-dir-missing")

    # -- what the heartbeat carries and its answer asks ------------------------------------------
    def heartbeat_request(self) -> cpb.HeartbeatRequest:
        return cpb.HeartbeatRequest(node_name=self.name, gpus=self.gpus, jobs=[
            cpb.JobDigest(job_id=r.st.job_id, attempt=r.st.attempt, state=r.st.state) for r in self.jobs.values()])

    def fence(self, job_id: str, attempt: int) -> None:
        rec = self.jobs.get((job_id, attempt))
        if rec is not None and rec.st.state in LIVE:
            self.end(rec, STOPPED, "fenced")
            self.farm.fenced += 1

    def forget(self, job_id: str, attempt: int) -> bool:
        rec = self.jobs.get((job_id, attempt))
        if rec is None or rec.st.state in LIVE:
            return False
        del self.jobs[(job_id, attempt)]
        self.farm.acked += 1
        return True


class SoakFarm(cb.AgentFarm):
    """bench/fakefleet.py's AgentFarm (one event loop thread, `call`, `close`) with SoakAgents,
    one server per agent that can be stopped and started again on its port, agent/registrar.py's
    heartbeat loop, the fake runtime's clock, faults, and the ledger of every run."""

    def __init__(self, n: int, gpus: int, prefix: str, rng: random.Random, run_min: float, run_max: float,
                 long_share: float) -> None:
        super().__init__(n, gpus, prefix)
        self.agents = [SoakAgent(self, f"{prefix}-{i:03d}", gpus) for i in range(n)]  # type: ignore[misc]
        self.by_name = {a.name: a for a in self.agents}
        self.rng = rng
        self.run_min, self.run_max, self.long_share = run_min, run_max, long_share
        self.long_until = float("inf")  # monotonic end of the fault period: no long run goes past it
        self.runs: dict[tuple[str, int], list[Run]] = defaultdict(list)
        self.refused: Counter[str] = Counter()
        self.stop_calls = 0
        self.probe_calls = 0
        self.blackholed: Counter[str] = Counter()  # calls held by a partition, per method
        self.lost_answers = 0
        self.reregisters = 0
        self._due: list[tuple[float, int, SoakAgent, Rec]] = []
        self._seq = 0
        self._ticker: asyncio.Task[None] | None = None

    # -- the ledger and the fake runtime's clock (loop thread) ----------------------------------
    def start_run(self, root: str, attempt: int, node: str) -> Run:
        run = Run(root, attempt, node, wall())
        self.runs[(root, attempt)].append(run)
        if root not in self.first_launch:
            self.first_launch[root] = run.start  # wall clock here (bench/fakefleet.py: perf_counter)
        return run

    def schedule_end(self, agent: SoakAgent, rec: Rec) -> None:
        self._seq += 1
        # A few long jobs outlast a partition: their old attempt is still running when the node
        # comes back, and must be fenced.
        now = time.monotonic()
        run_s = self.rng.uniform(self.run_min, self.run_max)
        if self.rng.random() < self.long_share:
            run_s = max(run_s, min(self.rng.uniform(self.run_max, 10 * self.run_max), self.long_until - now))
        due = now + run_s
        heapq.heappush(self._due, (due, self._seq, agent, rec))

    async def _tick(self) -> None:
        while True:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, agent, rec = heapq.heappop(self._due)
                if rec.st.state in LIVE:
                    agent.end(rec, SUCCEEDED, "completed")  # the job's own end, reachable or not
            await asyncio.sleep(0.02)

    # -- servers --------------------------------------------------------------------------------
    async def _serve(self, a: SoakAgent) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        agent_pb2_grpc.add_AgentServicer_to_server(a, server)
        port = server.add_insecure_port(f"127.0.0.1:{a.port}")
        if not port or (a.port and port != a.port):
            raise SoakError(f"{a.name}: cannot bind 127.0.0.1:{a.port}")
        a.port, a.address = port, f"127.0.0.1:{port}"
        await server.start()
        a.server = server

    async def _start_servers(self) -> None:
        for a in self.agents:
            await self._serve(a)  # type: ignore[arg-type]

    async def _register_all(self, coordinator: str) -> float:
        # A real agent's channel (gpufleet.server.channel options): it finds a restarted
        # coordinator again within a heartbeat or two.
        self.channel = grpc.aio.insecure_channel(coordinator, options=CHANNEL_OPTIONS)
        self.stub = coordinator_pb2_grpc.FleetStub(self.channel)
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(self.stub.Register(a.register_request(), timeout=_harness.RPC_TIMEOUT)
                                         for a in self.agents))
        took = time.perf_counter() - t0
        for a in self.agents:
            a.registered = True
        self.interval = replies[0].heartbeat_interval_seconds or 2.0
        n = len(self.agents)
        self.hb_tasks = [self.loop.create_task(self._heartbeat_loop(a, self.interval * i / n))  # type: ignore[arg-type]
                         for i, a in enumerate(self.agents)]
        self._ticker = self.loop.create_task(self._tick())
        return took

    async def _heartbeat_loop(self, a: SoakAgent, delay: float) -> None:  # type: ignore[override]
        """agent/registrar.py's loop: register when needed, heartbeat, obey the answer, wait."""
        await asyncio.sleep(delay)
        while True:
            if not (a.down or a.cut):
                await self._beat(a)
            a.wake.clear()
            try:
                await asyncio.wait_for(a.wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def _beat(self, a: SoakAgent) -> None:
        assert self.stub is not None
        try:
            if not a.registered:
                await self.stub.Register(a.register_request(), timeout=AGENT_RPC_TIMEOUT)
                if a.down or a.cut:
                    self.lost_answers += 1
                    return  # the answer never arrived
                a.registered = True
            sent = wall()
            r = await self.stub.Heartbeat(a.heartbeat_request(), timeout=AGENT_RPC_TIMEOUT)
            if a.down or a.cut:
                self.lost_answers += 1
                return
            self.heartbeats += 1
            if r.reregister:
                self.reregisters += 1
                a.registered = False  # as the real agent: register (and be fenced) on the next beat
                return
            a.hb_sent.append(sent)
            a.hb_answered.append(wall())
            for d in r.stop:
                a.fence(d.job_id, d.attempt)
            for d in r.acknowledged:
                a.forget(d.job_id, d.attempt)
        except grpc.aio.AioRpcError as exc:
            self.heartbeat_errors += 1
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                a.registered = False

    async def _stop(self) -> None:
        tasks = [*self.hb_tasks, *([self._ticker] if self._ticker else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()
        await asyncio.gather(*(a.server.stop(grace=None) for a in self.agents if a.server is not None),  # type: ignore[attr-defined]
                             return_exceptions=True)

    # -- faults (called from other threads) -----------------------------------------------------
    def kill(self, a: SoakAgent) -> None:
        async def go() -> None:
            a.down, a.registered = True, False
            server, a.server = a.server, None
            if server is not None:
                await server.stop(grace=None)

        self.call(go())

    def revive(self, a: SoakAgent) -> None:
        async def go() -> None:
            await self._serve(a)
            a.down = False
            a.wake.set()  # a starting agent registers at once

        self.call(go())

    def cut(self, a: SoakAgent) -> None:
        async def go() -> None:
            a.cut = True
            a.reachable.clear()

        self.call(go())

    def heal(self, a: SoakAgent) -> None:
        async def go() -> None:
            a.cut = False
            a.reachable.set()

        self.call(go())

    def snapshot(self) -> dict[str, Any]:
        """What the agents hold right now (from another thread)."""
        async def go() -> dict[str, Any]:
            live = sum(1 for a in self.agents for r in a.jobs.values() if r.st.state in LIVE)  # type: ignore[attr-defined]
            held = sum(len(a.jobs) for a in self.agents)
            return {"live": live, "held": held}

        return dict(self.call(go()))
