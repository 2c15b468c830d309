"""The coordinator bench's simulated fleet: the database it runs on (a throwaway PostgreSQL cluster,
a --database-url server, or SQLite), the fake agents (grpc.aio servers that register, heartbeat and
answer Launch/Inspect/Stop like the real agent), and the real coordinator process. bench/coordinator.py
and bench/soak.py drive them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from bench import _harness
from bench._harness import PY, READY_TIMEOUT, RPC_TIMEOUT, BenchError, poll
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import healthy

RUNNING = pb.AGENT_JOB_STATE_RUNNING
SUCCEEDED = pb.AGENT_JOB_STATE_SUCCEEDED
STOPPED = pb.AGENT_JOB_STATE_STOPPED
LIVE = (pb.AGENT_JOB_STATE_PENDING, RUNNING)
AGENT_VERSION = "bench-fake"


def now_ts() -> Timestamp:
    t = Timestamp()
    t.GetCurrentTime()
    return t


# ---- the database ----------------------------------------------------------------------------------


class Database:
    """Where the coordinator's state lives for the run: a throwaway PostgreSQL cluster, a fresh
    database on a given server, or a SQLite file."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.url = ""
        self.describe = ""
        self._server: Any = None
        self._admin_dsn = ""
        self._dropdb = ""

    def setup(self) -> None:
        if self.args.sqlite:
            self.url = f"sqlite:///{self.root / 'coordinator.db'}"
            self.describe = "SQLite (WAL, synchronous=FULL) in a temp dir"
            return
        name = f"gpufleet_bench_{os.getpid()}"
        if self.args.database_url:
            self._create_on(self.args.database_url, name)
            return
        from tests import postgres as tp  # the tests' helper: initdb/pg_ctl as the postgres user

        self._server = tp.start_server(fsync=not self.args.no_fsync)
        self._admin(self._server.dsn(), f'CREATE DATABASE "{name}"')
        self.url = self._server.url(name)
        version = self._scalar(self.url, "SHOW server_version")
        self.describe = (f"PostgreSQL {version}, throwaway cluster on 127.0.0.1:{self._server.port} "
                         f"(fsync={'off' if self.args.no_fsync else 'on'})")

    def _create_on(self, url: str, name: str) -> None:
        """A fresh database on the server of `url` (dropped at the end); `url`'s own database
        itself when the role may not create databases."""
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise BenchError(f"--database-url must be postgresql+psycopg://..., got {parsed.drivername}")
        admin = parsed.set(drivername="postgresql")
        dsn = admin.render_as_string(hide_password=False)
        try:
            self._admin(dsn, f'CREATE DATABASE "{name}"')
        except Exception as exc:  # noqa: BLE001 - no CREATEDB: write into the given database
            print(f"bench: cannot create a database ({type(exc).__name__}); using {parsed.database!r} as is",
                  file=sys.stderr)
            self.url = url
        else:
            self._admin_dsn, self._dropdb = dsn, name
            self.url = parsed.set(database=name).render_as_string(hide_password=False)
        version = self._scalar(self.url, "SHOW server_version")
        self.describe = f"PostgreSQL {version} at {parsed.host}:{parsed.port or 5432} (--database-url)"

    @staticmethod
    def _admin(dsn: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    @staticmethod
    def _scalar(url: str, sql: str) -> Any:
        eng = sa.create_engine(url)
        try:
            with eng.connect() as conn:
                return conn.exec_driver_sql(sql).scalar()
        finally:
            eng.dispose()

    def postmaster_pid(self) -> int | None:
        if self._server is None:
            return None
        try:
            return int((self._server.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._dropdb:
            self._admin(self._admin_dsn, f'DROP DATABASE IF EXISTS "{self._dropdb}" WITH (FORCE)')
            self._dropdb = ""
        if self._server is not None:
            self._server.stop()
            self._server = None


# ---- fake agents -----------------------------------------------------------------------------------


class FakeAgent(agent_pb2_grpc.AgentServicer):
    """gpufleet.v1.Agent without a runtime: jobs are records that say RUNNING until told otherwise."""

    def __init__(self, farm: AgentFarm, name: str, gpus: int) -> None:
        self.farm = farm
        self.name = name
        self.address = ""
        self.started = time.monotonic()
        self.jobs: dict[str, pb.JobStatus] = {}
        self.gpus = [pb.GpuInfo(index=i, uuid=f"GPU-{name}-{i}", name="fake", healthy=True,
                                memory_total_bytes=80 << 30) for i in range(gpus)]
        self.registered = False

    # -- gpufleet.v1.Agent --------------------------------------------------------------------------
    async def Launch(self, request: apb.LaunchRequest, context: Any) -> pb.JobStatus:
        self.farm.launch_calls += 1
        cur = self.jobs.get(request.job_id)
        if cur is not None:
            if cur.attempt == request.attempt:
                self.farm.duplicate_launches += 1
                return cur  # idempotent on (job_id, attempt)
            if cur.attempt > request.attempt:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"job {request.job_id}: attempt {request.attempt} is older than {cur.attempt}")
        ts = now_ts()
        st = pb.JobStatus(job_id=request.job_id, attempt=request.attempt, state=RUNNING, created_at=ts,
                          started_at=ts, gpu_indices=request.gpu_indices, runtime="fake",
                          runtime_id=f"fake-{request.job_id}", output_dir=request.spec.output_dir,
                          job_type=request.spec.job_type)
        self.jobs[request.job_id] = st
        self.farm.record_launch(request.job_id, self.name, list(request.gpu_indices))
        return st

    async def _held(self, job_id: str, attempt: int, context: Any) -> pb.JobStatus:
        st = self.jobs.get(job_id)
        if st is not None and attempt in (0, st.attempt):
            return st
        await context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} attempt {attempt} not found")
        raise AssertionError("context.abort raises")

    async def Inspect(self, request: apb.InspectRequest, context: Any) -> pb.JobStatus:
        self.farm.inspect_calls += 1
        return await self._held(request.job_id, request.attempt, context)

    async def Stop(self, request: apb.StopRequest, context: Any) -> pb.JobStatus:
        st = await self._held(request.job_id, 0, context)
        if st.state in LIVE and request.attempt in (0, st.attempt):
            st.state = STOPPED
            st.stop_requested = True
            st.exit_code = -1
            st.finished_at.CopyFrom(now_ts())
        return st

    async def Acknowledge(self, request: apb.AcknowledgeRequest, context: Any) -> apb.AcknowledgeResponse:
        st = self.jobs.get(request.job_id)
        if st is not None and st.attempt == request.attempt and st.state not in LIVE:
            del self.jobs[request.job_id]
            return apb.AcknowledgeResponse(dropped=True)
        return apb.AcknowledgeResponse(dropped=False)

    async def ListJobs(self, request: apb.ListJobsRequest, context: Any) -> apb.ListJobsResponse:
        want = set(request.states)
        return apb.ListJobsResponse(jobs=[j for j in self.jobs.values() if not want or j.state in want])

    async def GetNode(self, request: apb.GetNodeRequest, context: Any) -> apb.NodeInfo:
        running = sum(1 for j in self.jobs.values() if j.state in LIVE)
        return apb.NodeInfo(hostname=self.name, agent_version=AGENT_VERSION, runtime="process",
                            uptime_seconds=time.monotonic() - self.started, gpus=self.gpus, gpu_source="fake",
                            node_name=self.name, jobs_held=len(self.jobs), jobs_running=running)

    # -- helpers (event-loop thread) ----------------------------------------------------------------
    def finish(self, job_id: str) -> bool:
        st = self.jobs.get(job_id)
        if st is None or st.state not in LIVE:
            return False
        st.state = SUCCEEDED
        st.exit_code = 0
        st.finished_at.CopyFrom(now_ts())
        return True

    def register_request(self) -> cpb.RegisterRequest:
        return cpb.RegisterRequest(node_name=self.name, address=self.address, labels={"bench": "1"},
                                   agent_version=AGENT_VERSION, runtime="process", gpus=self.gpus)

    def heartbeat_request(self) -> cpb.HeartbeatRequest:
        digests = [cpb.JobDigest(job_id=j.job_id, attempt=j.attempt, state=j.state)
                   for j in self.jobs.values()] if self.farm.digests else []
        return cpb.HeartbeatRequest(node_name=self.name, gpus=self.gpus, jobs=digests)


class AgentFarm:
    """N fake agents, each a grpc.aio server on its own loopback port, all on one event loop in a
    background thread; registering with and heartbeating to the coordinator."""

    def __init__(self, n: int, gpus: int, prefix: str, digests: bool = True) -> None:
        self.digests = digests
        self.agents = [FakeAgent(self, f"{prefix}-{i:03d}", gpus) for i in range(n)]
        self.by_name = {a.name: a for a in self.agents}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-agents", daemon=True)
        self.servers: list[grpc.aio.Server] = []
        self.channel: grpc.aio.Channel | None = None
        self.stub: coordinator_pb2_grpc.FleetStub | None = None
        self.hb_tasks: list[asyncio.Task[None]] = []
        self.interval = 2.0
        # Counters (written on the loop thread; read anywhere, a stale read is fine).
        self.launch_calls = 0
        self.duplicate_launches = 0
        self.inspect_calls = 0
        self.heartbeats = 0
        self.heartbeat_errors = 0
        self.heartbeat_ms: list[float] = []
        self.fenced = 0
        self.acked = 0
        self.first_launch: dict[str, float] = {}  # job_id -> perf_counter of its first Launch
        self.placed_on: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.double_booked = 0
        self._gpu_owner: dict[tuple[str, int], str] = {}

    # -- from the bench's thread ---------------------------------------------------------------------
    def call(self, coro: Any, timeout: float = READY_TIMEOUT) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start_servers())

    def register_all(self, coordinator: str) -> float:
        return float(self.call(self._register_all(coordinator)))

    def finish(self, job_ids: list[str]) -> int:
        async def go() -> int:
            done = 0
            for a in self.agents:
                for j in job_ids:
                    done += a.finish(j)
            return done

        return int(self.call(go()))

    def launched(self, job_ids: list[str]) -> int:
        return sum(1 for j in job_ids if j in self.first_launch)

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.call(self._stop(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    # -- event-loop thread ---------------------------------------------------------------------------
    def record_launch(self, job_id: str, node: str, gpus: list[int]) -> None:
        if job_id in self.first_launch:
            return
        self.first_launch[job_id] = time.perf_counter()
        self.placed_on[job_id] = (node, tuple(gpus))
        for g in gpus:
            owner = self._gpu_owner.get((node, g))
            if owner is not None and owner != job_id and node_job_live(self.by_name[node], owner):
                self.double_booked += 1
            self._gpu_owner[(node, g)] = job_id

    async def _start_servers(self) -> None:
        for a in self.agents:
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            agent_pb2_grpc.add_AgentServicer_to_server(a, server)
            port = server.add_insecure_port("127.0.0.1:0")
            if not port:
                raise BenchError(f"{a.name}: cannot bind a loopback port")
            a.address = f"127.0.0.1:{port}"
            await server.start()
            self.servers.append(server)

    async def _register_all(self, coordinator: str) -> float:
        self.channel = grpc.aio.insecure_channel(coordinator)
        self.stub = coordinator_pb2_grpc.FleetStub(self.channel)
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(self.stub.Register(a.register_request(), timeout=RPC_TIMEOUT)
                                         for a in self.agents))
        took = time.perf_counter() - t0
        for a in self.agents:
            a.registered = True
        self.interval = replies[0].heartbeat_interval_seconds or 2.0
        # Spread the first beats over one interval, as agents started at random times would be.
        n = len(self.agents)
        self.hb_tasks = [self.loop.create_task(self._heartbeat_loop(a, self.interval * i / n))
                         for i, a in enumerate(self.agents)]
        return took

    async def _heartbeat_loop(self, a: FakeAgent, delay: float) -> None:
        assert self.stub is not None
        await asyncio.sleep(delay)
        while True:
            t0 = time.perf_counter()
            try:
                if not a.registered:
                    await self.stub.Register(a.register_request(), timeout=RPC_TIMEOUT)
                    a.registered = True
                r = await self.stub.Heartbeat(a.heartbeat_request(), timeout=RPC_TIMEOUT)
                self.heartbeats += 1
                self.heartbeat_ms.append((time.perf_counter() - t0) * 1e3)
                if r.reregister:
                    a.registered = False
                for d in r.stop:
                    st = a.jobs.get(d.job_id)
                    if st is not None and st.attempt == d.attempt and st.state in LIVE:
                        st.state, st.exit_code = STOPPED, -1
                        self.fenced += 1
                for d in r.acknowledged:
                    st = a.jobs.get(d.job_id)
                    if st is not None and st.attempt == d.attempt and st.state not in LIVE:
                        del a.jobs[d.job_id]
                        self.acked += 1
            except grpc.aio.AioRpcError:
                self.heartbeat_errors += 1
            # The real agent waits the interval after each beat (not a fixed rate).
            await asyncio.sleep(self.interval)

    async def _stop(self) -> None:
        for t in self.hb_tasks:
            t.cancel()
        await asyncio.gather(*self.hb_tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()
        await asyncio.gather(*(s.stop(grace=None) for s in self.servers), return_exceptions=True)


def node_job_live(agent: FakeAgent, job_id: str) -> bool:
    st = agent.jobs.get(job_id)
    return st is not None and st.state in LIVE


# ---- the coordinator process -----------------------------------------------------------------------


class Coordinator(_harness.ServiceProcess):
    """`python -P -m gpufleet.coordinator.main` on 127.0.0.1:<any free port>, production defaults otherwise."""

    log_name = "coordinator.log"
    stop_timeout = 15.0

    def __init__(self, root: Path, url: str, extra: list[str]) -> None:
        self.state_dir = root / "state"
        super().__init__(root, [PY, "-P", "-m", "gpufleet.coordinator.main", "--listen", "127.0.0.1:0", "--state-dir",
                                str(self.state_dir), "--database-url", url, *own_port_flags(extra), *extra])
        self.addr = ""

    def start(self) -> None:
        self.spawn(env={k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")})
        addr_file = self.state_dir / "coordinator.addr"

        def ready() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"coordinator exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                text = addr_file.read_text().strip()
            except OSError:
                return None
            return text or None

        self.addr = poll(ready, READY_TIMEOUT, "the coordinator's address file", interval=0.02)
        self.channel = grpc.insecure_channel(self.addr)
        try:
            poll(lambda: healthy(self.channel) or (self.proc.poll() is not None and  # type: ignore[union-attr]
                                                    _raise(BenchError("coordinator exited"))),
                 READY_TIMEOUT, "coordinator health SERVING", interval=0.02)
        except BenchError as exc:
            raise BenchError(f"{exc}; log:\n{self.log_tail()}") from None

    def count_log(self, needle: str) -> int:
        try:
            with open(self.root / self.log_name, errors="replace") as f:
                return sum(1 for line in f if needle in line)
        except OSError:
            return 0


def own_port_flags(extra: list[str]) -> list[str]:
    """Any other port the coordinator listens on by default (e.g. --metrics-listen) is moved to a
    free one, so that the bench never collides with a coordinator already running here."""
    from gpufleet.coordinator import main as cmain

    names = {o.name for o in cmain.OPTIONS}
    return [f"--{name}=127.0.0.1:0" for name in ("metrics-listen",)
            if name in names and not any(a.startswith(f"--{name}") for a in extra)]


def _raise(exc: Exception) -> Any:
    raise exc


# ---- where the CPU goes ----------------------------------------------------------------------------
