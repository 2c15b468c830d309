"""Soak: the real coordinator on PostgreSQL, 100 simulated agents, thousands of short jobs, random faults.

    python3 bench/soak.py                               # defaults: 10,000 jobs, 120 s of faults; ~3 min
    python3 bench/soak.py --seconds 40 --jobs 2500      # quick: one fault of each kind at least; ~1 min
    python3 bench/soak.py --json                        # the same figures as JSON
    python3 bench/soak.py --seconds 3600 --jobs 200000  # longer: an hour of faults, 200,000 jobs
    python3 bench/soak.py --seconds 3600 --jobs 200000 --restart-every 0   # one coordinator process the
                                                        # whole hour, to watch its RSS grow (or not)

Running longer: --seconds is the fault period (the faults keep their rates: about 20 agent kills, 4
partitions and 3 coordinator restarts every 2 minutes), and the --jobs are submitted over its first
85 %: 10,000 in 102 s (98 jobs/s) at the defaults, 200,000 in 3,060 s (65 jobs/s) for the hour. On a
loaded 2-core machine the client falls behind the default pace and the last jobs arrive after the
faults are over; keep the rate at or below the default. The settle period (--settle), the final read
of the database and the mid-run invariant checks (--check-every; each reads every job and job
event, so they are spaced out as they grow slower) grow with the number of jobs. --seed repeats a
run's fault plan (the seed is printed). A coordinator restart resets its RSS: --restart-every 0
keeps one process for the whole run when memory is the point.

What runs. A throwaway PostgreSQL cluster (bench/coordinator.py's Database: initdb as the `postgres`
user the way tests/postgres.py does; fsync off unless --fsync, since the soak kills the coordinator,
never PostgreSQL) and a real `python -P -m gpufleet.coordinator.main` (bench/coordinator.py's Coordinator) on a
fixed loopback port, with --node-timeout/--reconcile-interval as given here and production defaults
otherwise. In this process: 100 fake agents, each a grpc.aio server implementing gpufleet.v1.Agent
(bench/coordinator.py's FakeAgent and AgentFarm, extended here) that registers through
gpufleet.v1.Fleet and heartbeats the way agent/registrar.py does (digest of every job held; on
`reregister` it registers again the next beat; it stops the attempts the answer fences and forgets
the acknowledged ones). Fake runtime: Launch records (job, attempt) in the agent's own job table with
the real agent's rules (idempotent on (job, attempt); an older attempt, a second live attempt of a
job, an attempt already acknowledged, or a GPU held by another job is refused as agent/store.py
refuses it) and "runs" it for a random --run-min..--run-max seconds (a --long-share of the jobs up
to 10x longer, so that some outlast a partition, but not past the fault period), after which
Inspect/ListJobs and the heartbeat digest say SUCCEEDED, exit 0. A job keeps "running" while its
agent is down or cut off, like a container does. A client submits --jobs 1-GPU/2-GPU jobs (max_retries --max-retries)
through Coordinator.SubmitJob, paced over 85 % of the fault period; a submission whose call failed
in a way that may have committed (the coordinator was killed under it) is sent again with the same
request_id (SubmitJob's idempotency key) once the coordinator answers again; every job also has a
unique name, by which jobs created twice are counted (must be 0).

Faults, random (Poisson arrivals, --kill-every/--partition-every/--restart-every seconds apart on
average; at least one of each kind when it fits) during --seconds, at most --max-faulty agents at a
time, all over by the end of the period:
- agent kill: its gRPC server stops and its heartbeats stop for 2-15 s, then a new server comes up
  on the same port with the job table intact and registers again (a restarted agent);
- partition: the agent's heartbeats stop and every call to it hangs until its deadline (packets
  dropped), for --node-timeout + 3-10 s, so the node is declared LOST; then healed (calls still
  within their deadline get through late, as TCP retransmits would): the agent must obey the
  fencing in the heartbeat answers;
- coordinator restart: SIGKILL of the coordinator process, restarted 0.5-3 s later.
Then: no new faults, every job submitted, and up to --settle seconds for every job to end and every
agent to have forgotten every acknowledged attempt.

Figures (table, or --json):
- jobs completed (final attempt SUCCESS), ended otherwise (by status and reason), lost: a submitted
  job (acknowledged to the client) missing from the database, or whose last attempt is not terminal
  after the settle period. Must be 0.
- duplicated: job roots that ran more than once. A root counts when (a) two of its attempts ran to
  completion on the fake agents "as the current attempt": the coordinator took that completion as
  the job's result (SUCCESS), or it had been told (a heartbeat sent after the completion was
  answered before the coordinator ended that attempt otherwise, and the coordinator was not killed
  within RECORD_GRACE_S of that answer, before it could record the end). A completion the coordinator
  could not hear of, because the node was cut off or killed before its next heartbeat, and that it then
  ended as NODE_LOST and ran again, is the price of the fault: counted apart, as "re-runs after
  node loss". Or (b) two of its attempts ran at the same time, unless the older one's node was cut
  off when the coordinator declared it LOST and that attempt ended within --fence-bound seconds of
  the node coming back (fencing). Or (c) one attempt ran twice (two nodes, or again after it
  ended). Must be 0.
- fault to true state, max (and p50): cut off -> node LOST and its jobs STOPPED+requeued in the
  database; node back -> its superseded attempts stopped (fenced); agent back (short kill) -> the
  jobs that ended while it was down recorded; coordinator SIGKILL -> serving again, and -> the jobs
  that ended meanwhile recorded; and for every job, agent completion -> SUCCESS in the database.
  Also, without a fault of their own: QUEUED -> assigned (a stalled scheduler shows here),
  SubmitJob -> first Launch, and the agents' heartbeat round trip.
- false node losses (LOST although the coordinator had answered a heartbeat from it within the
  timeout), missed node losses (silent longer than timeout + 2 s, counted from a restarted
  coordinator's start as the coordinator counts it, and never LOST), final states that contradict
  what the agents did (SUCCESS no agent completed, a completed attempt ended STOPPED/FAILED on the
  agent's word, LAUNCH_FAILED for an attempt that ran), leftovers on the agents, tests/invariants.py's
  checks of the coordinator's database (mid-run, and settled at the end), coordinator RSS (max, at
  the end, per process) and the error lines and tracebacks in its log.
- warnings, which do not fail the run: Launch calls for attempts that had already ended (refused by
  the agent's own rules, so nothing ran twice), Launches refused because an older attempt was still
  live there (ABORTED: the job is queued again), ProbeOutputs calls for attempts the agent no longer
  held. Jobs created twice by a retried SubmitJob count as a problem.
Exit status: 0 all of the must-be-0 figures clean, 1 something is wrong (lost, duplicated, untrue,
...), 2 the soak itself failed, 130 interrupted. The coordinator, the agents and the PostgreSQL
cluster are removed at the end, also on Ctrl-C/SIGTERM (--keep keeps the temp dir with the
coordinator's log).
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# As in bench/coordinator.py: run as `python3 bench/soak.py`, this folder comes first on sys.path and
# bench/coordinator.py would shadow the `coordinator` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from gpufleet.coordinator.db import engine as dbengine  # noqa: E402

from bench import _harness  # noqa: E402  (what every bench shares)
from bench import coordinator as cb  # noqa: E402  (fake agents, coordinator process, database)
from gpufleet.server import CHANNEL_OPTIONS  # noqa: E402
from gpufleet.v1 import agent_pb2 as apb  # noqa: E402
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc  # noqa: E402
from gpufleet.v1 import common_pb2 as pb  # noqa: E402
from gpufleet.v1 import coordinator_pb2 as cpb  # noqa: E402
from tests import invariants  # noqa: E402
from tests.harness import free_port  # noqa: E402

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
    """bench/coordinator.py's FakeAgent with a job table keyed like the real agent's store
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
    """bench/coordinator.py's AgentFarm (one event loop thread, `call`, `close`) with SoakAgents,
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
            self.first_launch[root] = run.start  # wall clock here (bench/coordinator.py: perf_counter)
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


# ---- the coordinator process ---------------------------------------------------------------------


class CoordinatorProcess:
    """bench/coordinator.py's Coordinator on a fixed port (agents and clients keep its address across
    restarts), with SIGKILL + start again, and its RSS and CPU followed across processes."""

    def __init__(self, root: Path, url: str, port: int, extra: list[str]) -> None:
        self.c = cb.Coordinator(root, url, ["--listen", f"127.0.0.1:{port}", *extra])
        self.addr = f"127.0.0.1:{port}"
        self.lock = threading.Lock()
        self.up = threading.Event()
        self.pids: list[int] = []
        self.rss_max: dict[int, int] = {}  # pid -> max VmRSS kB seen
        self.rss_last: dict[int, int] = {}
        self.cpu: dict[int, float] = {}

    @property
    def pid(self) -> int | None:
        proc = self.c.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> float:
        t0 = time.monotonic()
        with self.lock:
            (self.c.state_dir / "coordinator.addr").unlink(missing_ok=True)
            self.c.start()
            self.pids.append(self.c.pid)
        self.up.set()
        return time.monotonic() - t0

    def kill(self) -> None:
        with self.lock:
            self.up.clear()
            self.sample()
            if self.c.channel is not None:
                self.c.channel.close()
                self.c.channel = None
            proc = self.c.proc
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        with self.lock:
            self.sample()
            self.up.clear()
            self.c.stop()

    def sample(self) -> None:
        pid = self.pid
        if pid is None:
            return
        rss = vm_kb(pid, "VmRSS")
        if rss:
            self.rss_last[pid] = rss
            self.rss_max[pid] = max(rss, self.rss_max.get(pid, 0))
        cpu = _harness.cpu_seconds(pid)
        if cpu:
            self.cpu[pid] = cpu


def vm_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# ---- the client ----------------------------------------------------------------------------------


class Submitter:
    """Submits N jobs through Coordinator.SubmitJob, paced over `window` seconds, from a few threads.
    A call that failed after it may have committed (UNAVAILABLE, DEADLINE_EXCEEDED, ...) is sent again,
    with the same request_id, once the coordinator answers again."""

    AMBIGUOUS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                 grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def __init__(self, coord: CoordinatorProcess, engine: sa.Engine, n: int, window: float, rng: random.Random,
                 max_retries: int, workers: int = 8) -> None:
        self.coord = coord
        self.engine = engine
        self.n = n
        self.window = window
        self.max_retries = max_retries
        self.gpus = [rng.choice((1, 1, 1, 2)) for _ in range(n)]
        self.channel = grpc.insecure_channel(coord.addr, options=CHANNEL_OPTIONS)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit")
        self.thread = threading.Thread(target=self._pace, name="submitter", daemon=True)
        self.lock = threading.Lock()
        self.acked: dict[int, str] = {}  # job index -> root id the client was given
        self.sent_at: dict[str, float] = {}  # root id -> wall time of the call that created it
        self.latency_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.retried = 0  # submissions answered only by a retry after an ambiguous error
        self.run_id = uuid.uuid4().hex[:12]
        self.refused: list[str] = []
        self.done = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def _pace(self) -> None:
        t0 = time.monotonic()
        futures = []
        for i in range(self.n):
            delay = t0 + self.window * i / self.n - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            try:
                futures.append(self.pool.submit(self._one, i))
            except RuntimeError:  # the pool was shut down (Ctrl-C)
                break
        for f in futures:
            try:
                f.result()
            except BaseException:  # noqa: BLE001 - canceled at shutdown
                pass
        self.done.set()

    def _one(self, i: int) -> None:
        # The request_id makes a retry safe: a call that failed after it committed (the coordinator
        # was killed under it) is answered by the retry with the job the first try made.
        req = cpb.SubmitJobRequest(spec=pb.JobSpec(command=["true"], output_dir="soak"), gpus=self.gpus[i],
                                   max_retries=self.max_retries, name=JOB_NAME.format(i),
                                   request_id=f"{self.run_id}-{i}")
        first_wall: float | None = None
        while not self.stop.is_set():
            t_wall, t0 = wall(), time.perf_counter()
            first_wall = t_wall if first_wall is None else first_wall
            try:
                job = self.stub.SubmitJob(req, timeout=30, wait_for_ready=True)
            except grpc.RpcError as exc:
                code = exc.code()
                self.errors[code.name] += 1
                if code not in self.AMBIGUOUS:
                    with self.lock:
                        self.refused.append(f"{req.name}: {code.name}: {exc.details()}")
                    return
                while not self.coord.up.wait(0.5):  # retry once the coordinator answers again
                    if self.stop.is_set():
                        return
                continue
            with self.lock:
                if t_wall != first_wall:
                    self.retried += 1
                else:
                    self.latency_ms.append((time.perf_counter() - t0) * 1e3)
                self.acked[i] = job.job_id
                self.sent_at.setdefault(job.job_id, first_wall)
            return

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=40)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.channel.close()


# ---- faults ----------------------------------------------------------------------------------------


@dataclass
class Window:
    """One fault as it really happened (wall clock)."""

    kind: str  # kill | partition | restart
    target: str  # node name, or "coordinator"
    start: float
    end: float | None = None
    planned_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class Faults:
    """Plans faults (Poisson arrivals per kind) and injects them for `seconds`, from its own thread."""

    def __init__(self, args: argparse.Namespace, rng: random.Random, farm: SoakFarm, coord: CoordinatorProcess,
                 progress: Callable[[str], None]) -> None:
        self.args = args
        self.rng = rng
        self.farm = farm
        self.coord = coord
        self.progress = progress
        self.windows: list[Window] = []
        self.skipped: Counter[str] = Counter()
        self.stop = threading.Event()
        self.faulty: dict[str, Window] = {}
        self.lock = threading.Lock()
        self.restarting = threading.Lock()
        self.restart_threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.t0_wall = wall()
        self.plan = self._plan()

    def _plan(self) -> list[tuple[float, str, float]]:
        a, rng = self.args, self.rng
        start, end = min(10.0, a.seconds / 6), a.seconds
        plan: list[tuple[float, str, float]] = []
        kinds = (("kill", a.kill_every, lambda: rng.uniform(2.0, 15.0)),
                 ("partition", a.partition_every, lambda: a.node_timeout + rng.uniform(3.0, 10.0)),
                 ("restart", a.restart_every, lambda: rng.uniform(0.5, 3.0)))
        for kind, every, dur in kinds:
            if every <= 0:
                continue
            t, n = start, 0
            while True:
                t += rng.expovariate(1.0 / every)
                d = dur()
                if t + d > end:
                    break
                plan.append((t, kind, d))
                n += 1
            if not n:  # a short run still gets one of each kind, when one fits
                d = dur()
                if start + d < end:
                    plan.append((rng.uniform(start, end - d), kind, d))
        return sorted(plan)

    def run(self, t0: float) -> None:
        """Inject the plan; returns at t0 + seconds with every fault over."""
        pending: list[tuple[float, int, str, Any]] = [(t0 + t, i, kind, d) for i, (t, kind, d) in enumerate(self.plan)]
        heapq.heapify(pending)
        seq = len(pending)
        deadline = t0 + self.args.seconds
        while pending and not self.stop.is_set():
            at, _, kind, arg = pending[0]
            if self.stop.wait(max(0.0, at - time.monotonic())):
                break
            heapq.heappop(pending)
            try:
                if kind in ("kill", "partition"):
                    a = self._pick()
                    if a is None:
                        self.skipped[kind] += 1
                        continue
                    w = Window(kind, a.name, wall(), planned_s=arg)
                    with self.lock:
                        self.faulty[a.name] = w
                    (self.farm.kill if kind == "kill" else self.farm.cut)(a)
                    self.windows.append(w)
                    seq += 1
                    heapq.heappush(pending, (at + arg, seq, "end", (a, w)))
                elif kind == "end":
                    a, w = arg
                    (self.farm.revive if w.kind == "kill" else self.farm.heal)(a)
                    w.end = wall()
                    with self.lock:
                        self.faulty.pop(a.name, None)
                elif kind == "restart":
                    if not self.restarting.acquire(blocking=False):
                        self.skipped[kind] += 1
                        continue
                    t = threading.Thread(target=self._restart, args=(arg,), name="restart", daemon=True)
                    self.restart_threads.append(t)
                    t.start()
            except Exception as exc:  # noqa: BLE001 - report, keep going
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        self.stop.wait(max(0.0, deadline - time.monotonic()))
        self.finish()

    def _pick(self) -> SoakAgent | None:
        with self.lock:
            if len(self.faulty) >= self.args.max_faulty:
                return None
            free = [a for a in self.farm.agents if a.name not in self.faulty]
        return self.rng.choice(free) if free else None  # type: ignore[return-value]

    def _restart(self, pause: float) -> None:
        w = Window("restart", "coordinator", wall(), planned_s=pause)
        self.windows.append(w)
        try:
            self.coord.kill()
            w.detail["killed_pid"] = self.coord.pids[-1] if self.coord.pids else None
            if self.stop.wait(pause):
                return
            took = self.coord.start()
            w.end = wall()
            w.detail["start_s"] = round(took, 3)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"coordinator restart: {type(exc).__name__}: {exc}")
        finally:
            self.restarting.release()

    def finish(self) -> None:
        """Every fault over: join restarts, revive and heal whatever is still down or cut off."""
        for t in self.restart_threads:
            t.join(timeout=120)
        with self.lock:
            left = list(self.faulty.items())
            self.faulty.clear()
        for name, w in left:
            a = self.farm.by_name[name]
            (self.farm.revive if w.kind == "kill" else self.farm.heal)(a)  # type: ignore[arg-type]
            w.end = wall()

    def active(self) -> int:
        with self.lock:
            return len(self.faulty)


# ---- watching the run ------------------------------------------------------------------------------


class Watcher:
    """Once a second: the coordinator's RSS and CPU; every few seconds the job counts and a progress
    line; every --check-every seconds tests/invariants.py's checks of the coordinator's database."""

    def __init__(self, engine: sa.Engine, url: str, coord: CoordinatorProcess, farm: SoakFarm, faults: Faults,
                 submitter: Submitter, check_every: float, progress: Callable[[str], None],
                 postmaster: int | None) -> None:
        self.engine = engine
        self.url = url
        self.coord = coord
        self.farm = farm
        self.faults = faults
        self.submitter = submitter
        self.check_every = check_every
        self.progress = progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self.t0 = time.monotonic()
        self.counts: dict[str, int] = {}
        self.max_queued = 0
        self.max_running = 0
        self.checks = 0
        self.check_s: list[float] = []
        self.violations: list[str] = []
        self.error = ""
        self.postmaster = postmaster
        self.pg_cpu: dict[int, float] = {}  # postmaster and backends, last CPU seconds seen
        self.cpu0: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self.t0 = time.monotonic()
        busy, total = _harness.machine_busy()
        t = os.times()
        self.cpu0 = (t.user + t.system, busy, total)
        self.sample_pg()
        self.thread.start()

    def sample_pg(self) -> None:
        if self.postmaster:
            for pid in (self.postmaster, *_harness.children_of(self.postmaster)):
                cpu = _harness.cpu_seconds(pid)
                if cpu:
                    self.pg_cpu[pid] = cpu

    def cpu(self, pg0: dict[int, float], coord0: float) -> dict[str, float]:
        """CPU seconds over the run: the coordinator (every process), this process (fake agents,
        client, checks), PostgreSQL; and how busy the machine was (other work counts too)."""
        busy, total = _harness.machine_busy()
        t = os.times()
        wall_s = time.monotonic() - self.t0
        return {"coordinator_s": round(sum(self.coord.cpu.values()) - coord0, 1),
                "soak_process_s": round(t.user + t.system - self.cpu0[0], 1),
                "postgres_s": round(sum(v - pg0.get(pid, 0.0) for pid, v in self.pg_cpu.items()), 1),
                "wall_s": round(wall_s, 1),
                "machine_busy_pct": round(100 * (busy - self.cpu0[1]) / max(1, total - self.cpu0[2]), 1),
                "cpus": float(os.cpu_count() or 1)}

    def _run(self) -> None:
        next_count = next_check = time.monotonic() + 5
        next_line = time.monotonic() + 10
        while not self.stop.wait(1.0):
            try:
                self.coord.sample()
                self.sample_pg()
                now = time.monotonic()
                if now >= next_count:
                    next_count = now + 5
                    self.count()
                if now >= next_line:
                    next_line = now + 10
                    self.line()
                if self.check_every > 0 and now >= next_check:
                    self.check(settled=False)
                    next_check = time.monotonic() + max(self.check_every, 5 * self.check_s[-1])
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unreachable
                self.error = f"{type(exc).__name__}: {exc}"

    def count(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            self.counts = dict(conn.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
        self.max_queued = max(self.max_queued, self.counts.get("QUEUED", 0))
        self.max_running = max(self.max_running, self.counts.get("RUNNING", 0))
        return self.counts

    def line(self) -> None:
        c = self.counts
        pid = self.coord.pid
        rss = self.coord.rss_last.get(pid or -1, 0) / 1024
        self.progress(f"soak: {time.monotonic() - self.t0:5.0f}s  submitted {len(self.submitter.acked):,}/"
                      f"{self.submitter.n:,}  attempts: queued {c.get('QUEUED', 0):,} running {c.get('RUNNING', 0):,} "
                      f"success {c.get('SUCCESS', 0):,} stopped {c.get('STOPPED', 0):,} failed {c.get('FAILED', 0):,}"
                      f"  faulty agents {self.faults.active()}  coordinator "
                      f"{'up' if self.coord.up.is_set() else 'DOWN'} {rss:.0f} MiB")

    def check(self, settled: bool) -> list[str]:
        t0 = time.perf_counter()
        v = invariants.check_invariants(self.url, [], None, settled=settled)
        self.check_s.append(time.perf_counter() - t0)
        self.checks += 1
        stamp = f"t={time.monotonic() - self.t0:.0f}s{' settled' if settled else ''}"
        self.violations += [f"{stamp}: {x}" for x in v]
        return v

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)


# ---- the verdict ---------------------------------------------------------------------------------


def ts(x: Any) -> float | None:
    return None if x is None else float(x.timestamp())


def reason_code(msg: str) -> str:
    return (msg or "").split(":", 1)[0].strip() or "-"


def analyse(engine: sa.Engine, args: argparse.Namespace, farm: SoakFarm, faults: Faults, sub: Submitter,
            interval: float) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, root_id, attempt, status, node, error_message, name, created_at, assigned_at, finished_at, "
            "superseded_by, acked FROM jobs")).mappings().all()
        node_events = conn.execute(sa.text(
            "SELECT entity_id, from_state, to_state, at FROM events WHERE entity = 'node' ORDER BY id")).all()
    by_root: dict[str, list[Any]] = defaultdict(list)
    by_key: dict[tuple[str, int], Any] = {}
    names: Counter[str] = Counter()
    for r in rows:
        by_root[r["root_id"]].append(r)
        by_key[(r["root_id"], int(r["attempt"]))] = r
        if int(r["attempt"]) == 1:
            names[r["name"]] += 1
    for lst in by_root.values():
        lst.sort(key=lambda r: int(r["attempt"]))
    timeout = args.node_timeout
    slack = interval + 1.5  # a node back may be declared LOST by a sweep that ran just before its next beat

    # Agents' ground truth: windows when a node could not be reached.
    cut: dict[str, list[Window]] = defaultdict(list)
    for w in faults.windows:
        if w.kind != "restart":
            cut[w.target].append(w)

    def rel(t: float | None) -> str:
        return "?" if t is None else f"+{t - faults.t0_wall:.1f}s"

    def describe(row: Any) -> str:
        if row is None:
            return "no such attempt"
        return (f"{row['status']} {reason_code(row['error_message'])} at {rel(ts(row['finished_at']))}, "
                f"assigned {rel(ts(row['assigned_at']))}")

    coordinator_kills = sorted(w.start for w in faults.windows if w.kind == "restart")

    def told(node: str, after: float, before: float) -> bool:
        """A heartbeat of `node` sent after `after` was answered by `before`, and the coordinator lived
        on for RECORD_GRACE_S after answering: the coordinator heard, and had time to record it (a
        heartbeat's answer waits for the record at most 3 s; a slower Inspect finishes after it)."""
        agent = farm.by_name[node]
        assert isinstance(agent, SoakAgent)
        k = bisect.bisect_left(agent.hb_sent, after)
        if k >= len(agent.hb_sent) or agent.hb_answered[k] > before:
            return False
        answered = agent.hb_answered[k]
        i = bisect.bisect_left(coordinator_kills, answered)
        return i >= len(coordinator_kills) or coordinator_kills[i] > answered + RECORD_GRACE_S

    def cut_at(node: str, t: float, extra: float = 0.0) -> Window | None:
        for w in cut.get(node, ()):
            if w.start <= t <= (w.end if w.end is not None else float("inf")) + extra:
                return w
        return None

    # -- jobs: completed, ended otherwise, lost -------------------------------------------------
    acked = dict(sub.acked)
    lost: list[str] = []
    finals: Counter[str] = Counter()
    completed = 0
    for i, root in sorted(acked.items()):
        attempts = by_root.get(root)
        if not attempts:
            lost.append(f"{JOB_NAME.format(i)} ({root}): acknowledged to the client, not in the database")
            continue
        last = attempts[-1]
        if last["status"] not in TERMINAL:
            runs = farm.runs.get((root, int(last["attempt"])), [])
            truth = ("; " + ", ".join(f"on {x.node} since {rel(x.start)}: {x.how or 'running'}" for x in runs)
                     if runs else "; no agent ever ran it")
            lost.append(f"{root}: attempt {last['attempt']} still {last['status']} on {last['node']} "
                        f"(created {rel(ts(last['created_at']))}, assigned {rel(ts(last['assigned_at']))}{truth})")
        elif last["status"] == "SUCCESS":
            completed += 1
        else:
            finals[f"{last['status']} {reason_code(last['error_message'])}"] += 1
    never_acked = sub.n - len(acked)
    double_submits = sorted(n for n, c in names.items() if c > 1)
    examples_other = [f"{r[-1]['id']}: {r[-1]['status']} {r[-1]['error_message']}" for r in by_root.values()
                      if r[-1]["status"] in TERMINAL and r[-1]["status"] != "SUCCESS"][:5]

    # -- duplicated ------------------------------------------------------------------------------
    dup: dict[str, set[str]] = defaultdict(set)
    dup_examples: list[str] = []
    reruns_after_loss = 0
    runs_by_root: dict[str, list[Run]] = defaultdict(list)
    for (root, attempt), runs in farm.runs.items():
        runs_by_root[root] += runs
        if len(runs) > 1:
            dup["same attempt ran twice"].add(root)
            dup_examples.append(f"{root} attempt {attempt} ran on {[r.node for r in runs]}")
    end_of_time = wall()
    fence_bound = args.fence_bound
    for root, runs in runs_by_root.items():
        current = []
        for x in runs:
            if x.how != "completed" or x.end is None:
                continue
            row = by_key.get((root, x.attempt))
            verdict_t = ts(row["finished_at"]) if row is not None else None
            if (row is None or row["status"] == "SUCCESS" or verdict_t is None
                    or told(x.node, x.end, verdict_t)):
                current.append(x)
            elif reason_code(row["error_message"]) in NODE_LOSS:
                reruns_after_loss += 1
        if len(current) > 1:
            dup["ran to completion twice"].add(root)
            dup_examples.append(f"{root} completed twice: " + "; ".join(
                f"attempt {x.attempt} on {x.node} {rel(x.start)}-{rel(x.end)} "
                f"(database: {describe(by_key.get((root, x.attempt)))}; faults on the node: "
                f"{[(w.kind, rel(w.start), rel(w.end)) for w in cut.get(x.node, ())] or 'none'})"
                for x in current))
        ordered = sorted(runs, key=lambda r: r.attempt)
        for i, old in enumerate(ordered):
            for new in ordered[i + 1:]:
                if new.attempt == old.attempt:
                    continue
                if not (old.start < (new.end or end_of_time) and new.start < (old.end or end_of_time)):
                    continue
                row = by_key.get((root, old.attempt))
                excused = False
                if row is not None and reason_code(row["error_message"]) in NODE_LOSS:
                    cw = cut_at(old.node, ts(row["finished_at"]) or 0.0, slack)
                    excused = cw is not None and cw.end is not None and (
                        old.end is not None and old.end <= cw.end + fence_bound)
                if not excused:
                    dup["two attempts at once"].add(root)
                    dup_examples.append(
                        f"{root}: attempt {old.attempt} on {old.node} {rel(old.start)}-{rel(old.end)} ({old.how}) "
                        f"overlaps attempt {new.attempt} on {new.node} {rel(new.start)}-{rel(new.end)}; database: "
                        f"attempt {old.attempt} {describe(row)}; faults on {old.node}: "
                        f"{[(w.kind, rel(w.start), rel(w.end)) for w in cut.get(old.node, ())] or 'none'}")
    duplicated = set().union(*dup.values()) if dup else set()

    # -- final states against what the agents did ------------------------------------------------
    untrue: list[str] = []
    loss_verdicts_completed = 0
    for key, r in by_key.items():
        runs = farm.runs.get(key, [])
        status, code = r["status"], reason_code(r["error_message"])
        if status not in TERMINAL:
            continue
        done = [x for x in runs if x.how == "completed"]
        if status == "SUCCESS":
            if not any(x.node == r["node"] for x in done):
                untrue.append(f"{r['id']}: SUCCESS on {r['node']} but no agent completed it (runs: "
                              f"{[(x.node, x.how) for x in runs]})")
        elif code in NODE_LOSS:
            loss_verdicts_completed += bool(done)
        elif code == "LAUNCH_FAILED":
            if runs:
                untrue.append(f"{r['id']}: {status} {r['error_message'][:80]!r} but it ran on {[x.node for x in runs]}")
        elif done:
            untrue.append(f"{r['id']}: {status} {r['error_message'][:80]!r} but the agent completed it")
    for key, runs in farm.runs.items():
        if key not in by_key:
            untrue.append(f"{key[0]} attempt {key[1]} ran on {[x.node for x in runs]} but the database has no such "
                          "attempt")

    # -- indices: completions recorded as SUCCESS (agent end, database end), node-loss verdicts ----
    recorded: list[tuple[float, str, float]] = []  # (agent completion, node, database finished_at)
    for key, runs in farm.runs.items():
        row = by_key.get(key)
        if row is None or row["status"] != "SUCCESS" or row["finished_at"] is None:
            continue
        for x in runs:
            if x.how == "completed" and x.end is not None and x.node == row["node"]:
                recorded.append((x.end, x.node, ts(row["finished_at"])))  # type: ignore[arg-type]
    recorded.sort()
    recorded_by_node: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    for rec in recorded:
        recorded_by_node[rec[1]].append(rec)
    loss_ends: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["finished_at"] is not None and reason_code(r["error_message"]) in NODE_LOSS:
            loss_ends[r["node"]].append(ts(r["finished_at"]))  # type: ignore[arg-type]
    for v in loss_ends.values():
        v.sort()

    def between(xs: list[tuple[float, str, float]], lo: float, hi: float) -> list[tuple[float, str, float]]:
        return xs[bisect.bisect_left(xs, (lo,)):bisect.bisect_right(xs, (hi, "\uffff"))]

    # -- nodes: lost, false losses, missed losses -------------------------------------------------
    restarts = [w for w in faults.windows if w.kind == "restart"]
    # A silent node is shown UNREACHABLE now (issue 12); with --lost-after 0 its jobs are given up
    # at that moment, as the soak's "declared LOST" counts them.
    lost_events = [(n, t) for n, frm, to, at in node_events
                   if to in ("LOST", "UNREACHABLE") and (t := ts(at)) is not None]
    lost_by_node: dict[str, list[float]] = defaultdict(list)
    for node, t in lost_events:
        lost_by_node[node].append(t)
    false_losses: list[str] = []
    for node, t in lost_events:
        agent = farm.by_name.get(node)
        if not isinstance(agent, SoakAgent):
            continue
        replies = agent.hb_answered  # in time order
        k = bisect.bisect_right(replies, t - 0.2)
        if k and agent.hb_sent[k - 1] >= t - (timeout - 1.5):
            false_losses.append(f"{node} LOST at +{t - faults.t0_wall:.1f}s; the coordinator answered its "
                                f"heartbeat {t - replies[k - 1]:.1f}s before")
    missed: list[str] = []
    to_lost: list[float] = []
    loss_to_true: list[float] = []
    heal_to_fenced: list[float] = []
    back_to_recorded: list[float] = []
    fences_without_fault = 0
    for node, ws in cut.items():
        for w in ws:
            end = w.end if w.end is not None else end_of_time
            lt = [t for t in lost_by_node.get(node, ()) if w.start <= t <= end + slack]
            if not lt:
                # A restarted coordinator counts a node's silence from its own start (no wall clocks).
                since = max([w.start, *[r.end for r in restarts if r.end is not None and w.start < r.end < end]])
                if end - since > timeout + 2.0:
                    missed.append(f"{node}: {w.kind} {rel(w.start)}-{rel(end)}, silent {end - since:.1f}s for "
                                  "the coordinator, never declared LOST")
                # A short outage: the jobs that ended meanwhile must be recorded once it is back.
                back_to_recorded += [max(0.0, db_t - end) for _, _, db_t in
                                     between(recorded_by_node.get(node, []), w.start, end)]
                continue
            to_lost.append(lt[0] - w.start)
            ends = loss_ends.get(node, [])
            ended = ends[bisect.bisect_left(ends, w.start):bisect.bisect_right(ends, end + slack)]
            loss_to_true.append(max([lt[0], *ended]) - w.start)
    for runs in farm.runs.values():
        for x in runs:
            if x.how != "fenced" or x.end is None:
                continue
            before = [w.end for w in cut.get(x.node, ()) if w.end is not None and w.end <= x.end]
            if before:
                heal_to_fenced.append(x.end - max(before))
            else:
                fences_without_fault += 1

    # -- coordinator restarts ------------------------------------------------------------------
    restart_s = [w.end - w.start for w in restarts if w.end is not None]
    restart_to_recorded: list[float] = []
    for w in restarts:
        if w.end is not None:
            # Only completions on agents that were up meanwhile: the others wait for their agent.
            restart_to_recorded += [db_t - w.start for agent_t, node, db_t in between(recorded, w.start, w.end)
                                    if not any(c.start <= db_t and (c.end is None or c.end >= agent_t)
                                               for c in cut.get(node, ()))]

    # -- latencies -------------------------------------------------------------------------------
    completion_to_db = [max(0.0, db_t - agent_t) for agent_t, _, db_t in recorded]
    queue_wait = [ts(r["assigned_at"]) - ts(r["created_at"]) for r in rows  # type: ignore[operator]
                  if r["assigned_at"] is not None]
    rtt: list[tuple[float, float, str]] = []  # (round trip, sent, node) of every answered heartbeat
    for agent in farm.agents:
        assert isinstance(agent, SoakAgent)
        rtt += [(b - a, a, agent.name) for a, b in zip(agent.hb_sent, agent.hb_answered, strict=True)]
    slow_hb = [f"{node} at {rel(sent)}: {d:.2f} s" for d, sent, node in sorted(rtt, reverse=True)[:5]]
    submit_to_launch = [farm.first_launch[root] - t for root, t in sub.sent_at.items() if root in farm.first_launch]
    per_job = Counter(len(v) for v in by_root.values())
    requeues = Counter(reason_code(r["error_message"]) for r in rows if r["superseded_by"])

    return {
        "jobs": {"asked": sub.n, "acknowledged": len(acked), "never_acknowledged": never_acked,
                 "completed": completed, "ended_otherwise": dict(finals.most_common()),
                 "ended_otherwise_examples": examples_other, "lost": len(lost), "lost_examples": lost[:10],
                 "duplicated": len(duplicated), "duplicated_by_kind": {k: len(v) for k, v in dup.items()},
                 "duplicated_examples": dup_examples[:10], "reruns_after_node_loss": reruns_after_loss,
                 "node_loss_verdicts_on_completed_runs": loss_verdicts_completed,
                 "attempts_per_job": {str(k): v for k, v in sorted(per_job.items())},
                 "requeued_by_reason": dict(requeues), "double_submissions": len(double_submits),
                 "double_submission_examples": double_submits[:5], "submits_retried": sub.retried,
                 "submit_refused": sub.refused[:5], "submit_errors": dict(sub.errors),
                 "untrue_final_states": len(untrue), "untrue_examples": untrue[:10]},
        "nodes": {"lost_events": len(lost_events), "false_losses": len(false_losses),
                  "false_loss_examples": false_losses[:10], "missed_losses": len(missed),
                  "missed_loss_examples": missed[:10], "fences": farm.fenced,
                  "fences_without_fault": fences_without_fault, "slowest_heartbeats": slow_hb},
        "true_state_s": {
            "cut_off_to_node_lost": stats(to_lost),
            "cut_off_to_jobs_stopped_and_requeued": stats(loss_to_true),
            "node_back_to_superseded_attempts_fenced": stats(heal_to_fenced),
            "agent_back_to_jobs_ended_meanwhile_recorded": stats(back_to_recorded),
            "coordinator_kill_to_serving": stats(restart_s),
            "coordinator_kill_to_jobs_ended_meanwhile_recorded": stats(restart_to_recorded),
            "completion_to_success_recorded": stats(completion_to_db),
            "submit_to_first_launch": stats(submit_to_launch),
            "queued_to_assigned": stats(queue_wait),
            "heartbeat_round_trip": stats([d for d, _, _ in rtt]),
        },
    }


# ---- report ----------------------------------------------------------------------------------------


def verdict(res: dict[str, Any]) -> list[str]:
    j, n = res["jobs"], res["nodes"]
    bad = []
    for what, val in (("lost jobs", j["lost"]), ("duplicated jobs", j["duplicated"]),
                      ("untrue final states", j["untrue_final_states"]), ("false node losses", n["false_losses"]),
                      ("missed node losses", n["missed_losses"]),
                      ("invariant violations", len(res["invariants"]["violations"])),
                      ("leftovers on agents", res["agents"]["left_live"]),
                      ("jobs never acknowledged to the client", j["never_acknowledged"]),
                      ("jobs created twice by a retried SubmitJob", j["double_submissions"])):
        if val:
            bad.append(f"{val} {what}")
    return bad


def warnings(res: dict[str, Any]) -> list[str]:
    """Not a broken promise, but the coordinator did something it should not have (see the README)."""
    out = []
    ag = res["agents"]
    stale = ag["refused"].get("already acknowledged", 0) + ag["refused"].get("older attempt", 0)
    if stale:
        out.append(f"{stale} Launch calls for an attempt that had already ended (the agent refused them; an agent "
                   "that had lost its state would have run the job again)")
    if ag["refused"].get("another attempt live", 0):
        out.append(f"{ag['refused']['another attempt live']} Launch calls refused because an older attempt of the "
                   "job was still live on that agent (ABORTED: the job is queued again)")
    if ag["probe_calls"]:
        out.append(f"{ag['probe_calls']} ProbeOutputs calls: the coordinator judged an attempt the agent no longer "
                   "held, most likely one it had itself ended and acknowledged moments before")
    return out


def fmt_s(d: dict[str, Any]) -> str:
    if not d["n"]:
        return "n/a (no such event)"
    return f"max {d['max_s']:.2f} s, p50 {d['p50_s']:.2f} s, p99 {d['p99_s']:.2f} s (n={d['n']})"


def print_table(res: dict[str, Any]) -> None:
    m, a, j, n, t, c = res["machine"], res["args"], res["jobs"], res["nodes"], res["true_state_s"], res["coordinator"]
    print(f"gpufleet soak: {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg_at_start']:g} at start; "
          f"{res['database']}; seed {a['seed']}")
    print(f"fleet: {a['agents']} fake agents x {a['gpus_per_agent']} GPUs, jobs run "
          f"{a['run_min']:g}-{a['run_max']:g} s; "
          f"coordinator --node-timeout {a['node_timeout']:g} --reconcile-interval {a['reconcile_interval']:g}"
          + (f" {' '.join(a['coordinator_arg'])}" if a["coordinator_arg"] else ""))
    f = res["faults"]
    print(f"faults over {a['seconds']:g} s: {f['kill']} agent kills ({f['kill_lost']} long enough to be LOST), "
          f"{f['partition']} partitions, {f['restart']} coordinator restarts"
          + (f"; skipped (too many agents faulty at once): {f['skipped']}" if f["skipped"] else "")
          + f"; wall {res['wall_s']:.0f} s, settled in {res['settle_s']:.1f} s")
    print(f"jobs: {j['acknowledged']:,} submitted, {j['completed']:,} completed, "
          f"{sum(j['ended_otherwise'].values()):,} ended otherwise"
          + (f" ({', '.join(f'{k}: {v}' for k, v in j['ended_otherwise'].items())})" if j["ended_otherwise"] else ""))
    print(f"  lost        {j['lost']:>6}   (must be 0)")
    print(f"  duplicated  {j['duplicated']:>6}   (must be 0)"
          + (f"  {j['duplicated_by_kind']}" if j["duplicated"] else ""))
    print(f"  untrue final states {j['untrue_final_states']}, false node losses {n['false_losses']}, "
          f"missed node losses {n['missed_losses']}, invariant violations {len(res['invariants']['violations'])} "
          f"({res['invariants']['checks']} checks), left live on agents {res['agents']['left_live']}, "
          f"held unacknowledged {res['agents']['left_held']}")
    print(f"  attempts per job {j['attempts_per_job']}; requeued by {j['requeued_by_reason'] or '-'}; "
          f"re-runs after node loss {j['reruns_after_node_loss']}; double submissions {j['double_submissions']}; "
          f"submits answered by a retry {j['submits_retried']}; "
          f"fences without a fault before them {n['fences_without_fault']}")
    print("fault -> true state:")
    for key, label in (("cut_off_to_node_lost", "cut off -> node LOST"),
                       ("cut_off_to_jobs_stopped_and_requeued", "cut off -> its jobs STOPPED+requeued"),
                       ("node_back_to_superseded_attempts_fenced", "node back -> superseded attempts fenced"),
                       ("agent_back_to_jobs_ended_meanwhile_recorded", "agent back -> jobs ended meanwhile recorded"),
                       ("coordinator_kill_to_serving", "coordinator SIGKILL -> serving"),
                       ("coordinator_kill_to_jobs_ended_meanwhile_recorded",
                        "coordinator SIGKILL -> jobs ended meanwhile recorded"),
                       ("completion_to_success_recorded", "any job: completion -> SUCCESS recorded"),
                       ("submit_to_first_launch", "any job: SubmitJob -> first Launch"),
                       ("queued_to_assigned", "any attempt: QUEUED -> assigned (scheduler)"),
                       ("heartbeat_round_trip", "any heartbeat: sent -> answered")):
        print(f"  {label:<52} {fmt_s(t[key])}")
    mib = 1 / 1024
    print(f"coordinator: RSS max {c['rss_max_kb'] * mib:.0f} MiB, at the end {c['rss_end_kb'] * mib:.0f} MiB "
          f"(VmHWM {c['vmhwm_end_kb'] * mib:.0f} MiB) over {c['processes']} processes, longest-lived "
          f"{c['longest_process_s']:.0f} s; CPU {c['cpu_s']:.0f} s; {c['log_errors']} error lines, "
          f"{c['log_tracebacks']} tracebacks in its log")
    u = res["cpu"]
    print(f"CPU over {u['wall_s']:.0f} s (seconds): coordinator {u['coordinator_s']:.0f}, this process (agents, "
          f"client, checks) {u['soak_process_s']:.0f}, PostgreSQL {u['postgres_s']:.0f}; the machine was "
          f"{u['machine_busy_pct']:.0f} % busy (all {u['cpus']:.0f} CPUs, other work included), load "
          f"{res['machine']['loadavg_at_end']:g} at the end")
    s = res["submit"]
    print(f"client: SubmitJob p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.0f} ms; "
          f"errors {s['errors'] or '-'}; most queued {res['max_queued']:,}")
    ag = res["agents"]
    print(f"agents: {ag['launch_calls']:,} Launch calls ({ag['duplicate_launches']} repeats, refused "
          f"{ag['refused'] or '-'}), {ag['stop_calls']} Stops, {ag['fenced']} fenced, {ag['probe_calls']} probes, "
          f"{ag['heartbeats']:,} heartbeats ({ag['heartbeat_errors']} failed, {ag['reregisters']} reregister), "
          f"calls held by partitions {ag['blackholed'] or '-'}")
    for key in ("lost_examples", "duplicated_examples", "untrue_examples", "ended_otherwise_examples"):
        if j[key]:
            print(f"{key.replace('_', ' ')}:")
            for e in j[key][:5]:
                print(f"  {e}")
    for key in ("false_loss_examples", "missed_loss_examples"):
        if n[key]:
            print(f"{key.replace('_', ' ')}:")
            for e in n[key][:5]:
                print(f"  {e}")
    if res["invariants"]["violations"]:
        print("invariant violations:")
        for e in res["invariants"]["violations"][:10]:
            print(f"  {e}")
    for w in res["warnings"]:
        print(f"warning: {w}")
    if res["errors"]:
        print("soak errors: " + "; ".join(res["errors"][:5]))
    print("PASS: nothing lost, nothing duplicated, every state true" if not res["problems"]
          else "FAIL: " + ", ".join(res["problems"]))


# ---- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, cleanup: _harness.Cleanup) -> dict[str, Any]:
    progress = _harness.progress_printer(args.quiet)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    t_begin = time.monotonic()
    res: dict[str, Any] = {
        "machine": _harness.machine_info(),
        "args": {"seconds": args.seconds, "jobs": args.jobs, "agents": args.agents,
                 "gpus_per_agent": args.gpus_per_agent, "run_min": args.run_min, "run_max": args.run_max,
                 "long_share": args.long_share,
                 "node_timeout": args.node_timeout, "reconcile_interval": args.reconcile_interval,
                 "kill_every": args.kill_every, "partition_every": args.partition_every,
                 "restart_every": args.restart_every, "max_faulty": args.max_faulty, "settle": args.settle,
                 "settle_max": args.settle_max,
                 "max_retries": args.max_retries, "fence_bound": args.fence_bound, "seed": seed,
                 "coordinator_arg": list(args.coordinator_arg)},
    }
    progress(f"soak: seed {seed}; preparing PostgreSQL ...")
    db_args = argparse.Namespace(sqlite=False, database_url=args.database_url, no_fsync=not args.fsync)
    db = cb.Database(root, db_args)
    cleanup.append(db.close)
    db.setup()
    res["database"] = db.describe
    engine = dbengine.make_engine(db.url)
    cleanup.append(engine.dispose)

    tag = f"soak-{rng.randrange(16 ** 4):04x}"
    farm = SoakFarm(args.agents, args.gpus_per_agent, tag, random.Random(seed + 3), args.run_min, args.run_max,
                    args.long_share)
    cleanup.append(farm.close)
    farm.start()
    extra = [f"--node-timeout={args.node_timeout:g}", f"--reconcile-interval={args.reconcile_interval:g}",
             f"--lost-after={args.lost_after:g}", *args.coordinator_arg]
    coord = CoordinatorProcess(root / "coordinator", db.url, free_port(), extra)
    cleanup.append(coord.stop)
    progress(f"soak: starting the coordinator and {args.agents} fake agents ...")
    coord.start()
    farm.register_all(coord.addr)
    interval = farm.interval
    _harness.poll(lambda: farm.heartbeats >= args.agents, _harness.READY_TIMEOUT, "a heartbeat from every agent",
                  interval=0.05)

    faults = Faults(args, random.Random(seed + 1), farm, coord, progress)
    sub = Submitter(coord, engine, args.jobs, 0.85 * args.seconds, random.Random(seed + 2), args.max_retries)
    cleanup.append(sub.close)
    watcher = Watcher(engine, db.url, coord, farm, faults, sub, args.check_every, progress, db.postmaster_pid())
    cleanup.append(watcher.close)

    def end_faults() -> None:
        faults.stop.set()
        faults.finish()

    cleanup.append(end_faults)
    plan = Counter(k for _, k, _ in faults.plan)
    progress(f"soak: {args.jobs:,} jobs over {0.85 * args.seconds:.0f} s; faults planned over {args.seconds:g} s: "
             f"{plan['kill']} agent kills, {plan['partition']} partitions, {plan['restart']} coordinator restarts")
    t0 = time.monotonic()
    faults.t0_wall = wall()
    farm.long_until = t0 + args.seconds
    watcher.start()
    pg0, coord0 = dict(watcher.pg_cpu), sum(coord.cpu.values())
    sub.start()
    faults.run(t0)  # returns once the fault period is over, everything healed
    progress("soak: faults over; waiting for every submission and every job to end ...")

    # -- settle ------------------------------------------------------------------------------------
    # Done when every job ended and every agent forgot every attempt; given up when nothing ended
    # for --settle seconds (a stuck job), or after --settle-max (the run stops by itself).
    t_settle = last_change = time.monotonic()
    settled = False
    before: tuple[int, int] | None = None
    while time.monotonic() - t_settle < args.settle_max and time.monotonic() - last_change < args.settle:
        counts = watcher.count()
        snap = farm.snapshot()
        now_ = (sum(counts.get(x, 0) for x in TERMINAL), len(sub.acked))
        if now_ != before:
            before, last_change = now_, time.monotonic()
        if sub.done.is_set() and not counts.get("QUEUED") and not counts.get("RUNNING") and not snap["held"]:
            settled = True
            break
        time.sleep(0.5)
    settle_s = time.monotonic() - t_settle
    if not settled:
        progress(f"soak: not settled after {settle_s:.0f} s; counting what is left")
    watcher.close()
    sub.close()
    coord.sample()
    watcher.sample_pg()
    res["cpu"] = watcher.cpu(pg0, coord0)
    t_end = time.monotonic()

    progress("soak: reading the database ...")
    watcher.check(settled=True)
    res.update(analyse(engine, args, farm, faults, sub, interval))
    snap = farm.snapshot()
    kills = [w for w in faults.windows if w.kind == "kill"]
    res["faults"] = {"kill": len(kills), "partition": sum(w.kind == "partition" for w in faults.windows),
                     "restart": sum(w.kind == "restart" for w in faults.windows),
                     "kill_lost": sum(1 for w in kills if w.end is not None and w.end - w.start > args.node_timeout),
                     "skipped": dict(faults.skipped), "t0_wall": faults.t0_wall,
                     "windows": [{"kind": w.kind, "target": w.target, "at_s": round(w.start - faults.t0_wall, 2),
                                  "seconds": round((w.end or w.start) - w.start, 2), **w.detail}
                                 for w in faults.windows]}
    res["wall_s"] = round(t_end - t_begin, 1)
    res["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    res["settle_s"] = round(settle_s, 1)
    res["settled"] = settled
    res["max_queued"] = watcher.max_queued
    res["max_running"] = watcher.max_running
    res["invariants"] = {"checks": watcher.checks, "check_s_max": round(max(watcher.check_s, default=0), 2),
                         "violations": watcher.violations[:50]}
    lat = sub.latency_ms or [0.0]
    res["submit"] = {"p50_ms": round(_harness.percentile(lat, 50), 2), "p99_ms": round(_harness.percentile(lat, 99), 2),
                     "max_ms": round(max(lat), 1), "errors": dict(sub.errors)}
    res["agents"] = {"launch_calls": farm.launch_calls, "duplicate_launches": farm.duplicate_launches,
                     "refused": dict(farm.refused), "stop_calls": farm.stop_calls, "fenced": farm.fenced,
                     "acked": farm.acked, "probe_calls": farm.probe_calls, "inspect_calls": farm.inspect_calls,
                     "heartbeats": farm.heartbeats, "heartbeat_errors": farm.heartbeat_errors,
                     "reregisters": farm.reregisters, "lost_answers": farm.lost_answers,
                     "blackholed": dict(farm.blackholed), "left_live": snap["live"], "left_held": snap["held"]}
    pids = coord.pids
    last = pids[-1]
    starts = [w.end for w in faults.windows if w.kind == "restart" and w.end is not None]
    lifetimes = [b - a for a, b in zip([faults.t0_wall, *starts], [*starts, wall()], strict=False)]
    res["coordinator"] = {
        "processes": len(pids), "rss_max_kb": max(coord.rss_max.values(), default=0),
        "rss_end_kb": coord.rss_last.get(last, 0), "vmhwm_end_kb": vm_kb(last, "VmHWM"),
        "rss_max_by_process_kb": [coord.rss_max.get(p, 0) for p in pids],
        "longest_process_s": round(max(lifetimes, default=0.0), 1),
        "cpu_s": round(sum(coord.cpu.values()), 1),
        "log_errors": coord.c.count_log('"level": "error"'), "log_tracebacks": coord.c.count_log("Traceback"),
    }
    res["errors"] = faults.errors + ([f"watcher: {watcher.error}"] if watcher.error else [])
    res["warnings"] = warnings(res)
    res["problems"] = verdict(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Soak the gpufleet coordinator with simulated agents and faults.")
    ap.add_argument("--seconds", type=float, default=120.0, help="fault period in seconds (default 120)")
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs to submit over the period (default 10000)")
    ap.add_argument("--agents", type=int, default=100, help="fake agents (default 100)")
    ap.add_argument("--gpus-per-agent", type=int, default=8, help="fake GPUs per agent (default 8)")
    ap.add_argument("--run-min", type=float, default=0.5, help="shortest fake job run in seconds (default 0.5)")
    ap.add_argument("--run-max", type=float, default=4.0, help="longest fake job run in seconds (default 4)")
    ap.add_argument("--long-share", type=float, default=0.03,
                    help="share of jobs that run 10x longer (--run-max..10x--run-max), so that some outlast "
                         "a partition and must be fenced (default 0.03)")
    ap.add_argument("--max-retries", type=int, default=10,
                    help="each job's max_retries: node losses it may be requeued after (default 10)")
    ap.add_argument("--node-timeout", type=float, default=10.0,
                    help="the coordinator's --node-timeout (default 10, its own default)")
    ap.add_argument("--lost-after", type=float, default=0.0,
                    help="the coordinator's --lost-after (default 0 here: a silent node's jobs are requeued as "
                         "soon as it is UNREACHABLE, so the faults exercise requeues and fencing)")
    ap.add_argument("--reconcile-interval", type=float, default=5.0,
                    help="the coordinator's --reconcile-interval (default 5, its own default)")
    ap.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between agent kills (0: none)")
    ap.add_argument("--partition-every", type=float, default=30.0, help="mean seconds between partitions (0: none)")
    ap.add_argument("--restart-every", type=float, default=35.0,
                    help="mean seconds between coordinator SIGKILL+restarts (0: none)")
    ap.add_argument("--max-faulty", type=int, default=5, help="at most this many agents down or cut off at once")
    ap.add_argument("--fence-bound", type=float, default=12.0,
                    help="seconds a node back from a cut may keep running a superseded attempt (default 12: "
                         "a beat answered reregister, one interval, Register, the beat that fences)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="after the faults, wait for every job to end and be acknowledged while something still "
                         "ends at least every this many seconds (default 30); what is left is lost")
    ap.add_argument("--settle-max", type=float, default=180.0,
                    help="and at most this many seconds in all (default 180)")
    ap.add_argument("--check-every", type=float, default=30.0,
                    help="seconds between mid-run invariant checks of the database (0: only at the end)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (fault plan, job sizes, run times)")
    ap.add_argument("--fsync", action="store_true", help="throwaway cluster with fsync on (default off)")
    ap.add_argument("--database-url", default="",
                    help="an existing PostgreSQL server (postgresql+psycopg://...): a fresh database on it")
    ap.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for gpufleet-coordinator (repeat)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (coordinator log) for a look")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if min(args.seconds, args.jobs, args.agents, args.gpus_per_agent) <= 0 or args.run_min > args.run_max:
        ap.error("--seconds, --jobs, --agents and --gpus-per-agent must be positive, --run-min <= --run-max")
    if args.max_faulty >= args.agents:
        ap.error("--max-faulty must leave some agents up")
    return _harness.run_main(args, run, print_table, lambda res: not res["problems"], tmp_prefix="gfsoak-",
                             name="soak", errors=(_harness.BenchError, grpc.RpcError, subprocess.SubprocessError),
                             describe=lambda exc: f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
