"""What drives a soak run: the coordinator process (SIGKILL and start again, RSS and CPU followed),
the paced submitter, the fault plan and its injection, and the watcher that checks invariants while
it runs. Used by bench/soak.py.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa

from bench import _harness
from bench import fakefleet as cb
from bench.soak_fleet import JOB_NAME, SoakAgent, SoakFarm, wall
from gpufleet.server import CHANNEL_OPTIONS
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests import invariants

# ---- the coordinator process ---------------------------------------------------------------------


class CoordinatorProcess:
    """bench/fakefleet.py's Coordinator on a fixed port (agents and clients keep its address across
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
