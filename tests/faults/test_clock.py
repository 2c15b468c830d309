"""Matrix 10: timeouts use monotonic time; a jumping wall clock changes no decision.

Coordinator (unit level): `coordinator.fleet.Fleet` over a real SQLite database, with an injected
monotonic clock, while the wall clock seen by the coordinator (time.time and `datetime.now` in
coordinator.fleet and coordinator.db.repo) jumps hours forward and back. A node whose heartbeats
are fresh by the monotonic clock is never declared LOST; a real monotonic silence longer than
--node-timeout is, and its job is stopped.

Agent (unit level, real process runtime): the stop grace period ends by the monotonic clock. A
wall-clock jump backwards after Stop must not postpone SIGKILL (it would have been postponed by
the jump: the supervisor compared `time.time()` with a wall deadline), and a jump forwards must
not cut the grace period short.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from gpufleet.agent.gpus import FakeGpus, GpuMonitor
from gpufleet.agent.runtime.process import ProcessRuntime
from gpufleet.agent.spec import JobSpec, Roots
from gpufleet.agent.states import JobState
from gpufleet.agent.store import Store
from gpufleet.agent.supervisor import Supervisor
from gpufleet.coordinator import fleet as fleet_mod
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import common as db_common
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.fleet import Digest, Fleet
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.states import JobStatus, NodeState

from tests.harness import pid_alive, wait_for
from tests.integration.test_coordinator_reconcile import holds
from tests.invariants import check_invariants
from tests.placing import assign

HOUR = 3600.0
TIMEOUT = 10.0


class Clock:
    """A settable clock: `mono` for monotonic time, or an offset added to the real wall time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallShift:
    """Shift the wall clock the coordinator/agent code sees by `offset` seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real_time = time.time
        shift = self

        class ShiftedDatetime(datetime):
            @classmethod
            def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
                return datetime.now(tz) + timedelta(seconds=shift.offset)

        self.time = lambda: real_time() + shift.offset
        monkeypatch.setattr(time, "time", self.time)
        monkeypatch.setattr(fleet_mod, "datetime", ShiftedDatetime)
        monkeypatch.setattr(db_common, "datetime", ShiftedDatetime)  # the repository's clock (_now)

    def jump(self, seconds: float) -> None:
        self.offset += seconds


# -- coordinator ------------------------------------------------------------------------------------


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[tuple[sa.Engine, str]]:
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    engine = dbengine.make_engine(url)
    dbengine.migrate(engine)
    yield engine, url
    engine.dispose()


GPU = {"index": 0, "uuid": "GPU-0", "name": "fake", "healthy": True}


def _node_state(engine: sa.Engine, name: str) -> NodeState:
    with engine.connect() as conn:
        return repo.get_node(conn, name).state


def _shown_state(engine: sa.Engine, name: str) -> NodeState:
    with engine.connect() as conn:
        return repo.get_node(conn, name).shown_state


def _job(engine: sa.Engine, job_id: str) -> tuple[str, str]:
    with engine.connect() as conn:
        j = repo.get_job(conn, job_id)
    return j.status.value, j.error_message


def _running_job(engine: sa.Engine, node: str) -> str:
    with engine.begin() as conn:
        job = repo.create_job(conn, spec={"command": ["/bin/true"], "output_dir": "x"}, gpus=1)
        assert assign(conn, job.id, node, [0], actor="test")
    return job.id


def test_wall_clock_jumps_cause_no_node_loss(coord: tuple[sa.Engine, str], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, url = coord
    wall = WallShift(monkeypatch)
    mono = Clock(1000.0)
    f = Fleet(engine, Reconciler(engine, AgentPool()), lambda: None, node_timeout=TIMEOUT, mono=mono,
              lost_after=2 * TIMEOUT)
    f.register("n1", "127.0.0.1:1", {}, "test", "process", [GPU])
    job_id = _running_job(engine, "n1")

    def beat() -> None:
        answer = f.heartbeat("n1", [GPU], [Digest(job_id, 1, "RUNNING")])
        assert not answer.reregister and not answer.stop

    beat()
    # The wall clock jumps by hours between heartbeats that are fresh by the monotonic clock.
    for jump in (+5 * HOUR, -10 * HOUR, +24 * HOUR, -48 * HOUR, +29 * HOUR):
        wall.jump(jump)
        mono.advance(TIMEOUT - 1)  # silent for almost the whole timeout, by the monotonic clock
        assert f.sweep() == []
        assert f.fresh_nodes() == {"n1"}
        assert _node_state(engine, "n1") is NodeState.READY
        assert _job(engine, job_id)[0] == JobStatus.RUNNING.value
        beat()  # stored with a wall time hours away from the previous one
    # The stored last_heartbeat is now hours in the future of the wall clock: no effect either.
    wall.jump(-6 * HOUR)
    mono.advance(TIMEOUT - 1)
    assert f.sweep() == [] and _node_state(engine, "n1") is NodeState.READY

    # A real silence longer than the timeout, by the monotonic clock, with the wall clock still:
    wall.jump(+6 * HOUR)
    mono.advance(TIMEOUT + 1)
    assert f.sweep() == ["n1"]
    # Silence is not death: the node is shown UNREACHABLE, its job keeps RUNNING ...
    assert _shown_state(engine, "n1") is NodeState.UNREACHABLE
    assert _job(engine, job_id)[0] == JobStatus.RUNNING.value
    assert f.fresh_nodes() == set()
    # ... until the job's lost_after passes in silence too.
    mono.advance(TIMEOUT)
    assert f.sweep() == ["n1"]
    status, message = _job(engine, job_id)
    assert status == JobStatus.STOPPED.value and message.startswith("NODE_LOST"), message
    assert f.fresh_nodes() == set()
    assert not check_invariants(url, [], None, settled=False)


def test_restarted_coordinator_counts_silence_from_its_own_start(coord: tuple[sa.Engine, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A node last seen (by the wall clock) hours ago is not LOST the moment a coordinator starts:
    its silence is measured from this process's start on the monotonic clock."""
    engine, url = coord
    wall = WallShift(monkeypatch)
    first = Fleet(engine, Reconciler(engine, AgentPool()), lambda: None, node_timeout=TIMEOUT, mono=Clock(50.0))
    first.register("n2", "127.0.0.1:2", {}, "test", "process", [GPU])
    job_id = _running_job(engine, "n2")
    wall.jump(+10 * HOUR)  # the coordinator is down for ten hours of wall time (or the clock stepped)
    mono = Clock(7.0)  # a new process: its own monotonic origin
    second = Fleet(engine, Reconciler(engine, AgentPool()), lambda: None, node_timeout=TIMEOUT, mono=mono,
                   lost_after=TIMEOUT)
    assert second.sweep() == [] and _node_state(engine, "n2") is NodeState.READY
    mono.advance(TIMEOUT - 0.5)
    assert second.sweep() == []
    mono.advance(1.0)
    assert second.sweep() == ["n2"]
    status, message = _job(engine, job_id)
    assert status == JobStatus.STOPPED.value
    assert message.startswith("SERVER_RESTART_CONTAINER_INSPECT_ERROR"), message
    assert not check_invariants(url, [], None, settled=False)


REPLICA_SKEW_BUG = (
    "BUG: coordinator/fleet.py Fleet._learn_from_db ages a heartbeat another replica stored by this "
    "replica's wall clock (age = datetime.now() - nodes.last_heartbeat, ignored unless 0 <= age <= "
    "node_timeout; ignored too when not newer than the last one seen). When the two replicas' wall "
    "clocks differ by more than the node timeout (a clock stepped by NTP or by hand on either host), "
    "the replica that does not receive a node's heartbeats never counts them and declares a healthy "
    "node LOST, stopping (and requeueing) its running jobs. Fix: do not age by wall time; a "
    "last_heartbeat that changed since the previous sweep (hb != mine) counts as seen at "
    "self.mono() on this replica's monotonic clock"
)


@pytest.mark.parametrize("skew", [
    0.0,
    pytest.param(+HOUR),
    pytest.param(-HOUR),
], ids=["same-clock", "other-replica-ahead-1h", "other-replica-behind-1h"])
def test_replica_learning_heartbeats_from_the_database_survives_a_clock_step(
        coord: tuple[sa.Engine, str], monkeypatch: pytest.MonkeyPatch, skew: float) -> None:
    """Two replicas over one database: the node heartbeats to A only; B learns of those heartbeats
    from the database. B's wall clock is `skew` away from A's (stepped, or simply wrong): B must not
    declare the node LOST while A receives its heartbeats every 2 s."""
    engine, url = coord
    wall = WallShift(monkeypatch)
    mono_a, mono_b = Clock(100.0), Clock(5000.0)
    a = Fleet(engine, Reconciler(engine, AgentPool()), lambda: None, node_timeout=TIMEOUT, mono=mono_a)
    b = Fleet(engine, Reconciler(engine, AgentPool()), lambda: None, node_timeout=TIMEOUT, mono=mono_b)
    a.register("n3", "127.0.0.1:3", {}, "test", "process", [GPU])
    job_id = _running_job(engine, "n3")
    for _ in range(int(3 * TIMEOUT / 2)):  # three node timeouts of heartbeats, 2 s apart
        mono_a.advance(2.0)
        mono_b.advance(2.0)
        wall.offset = 0.0  # replica A's wall clock
        assert not a.heartbeat("n3", [GPU], [Digest(job_id, 1, "RUNNING")]).reregister
        wall.offset = skew  # replica B's wall clock
        assert b.sweep() == [], "replica B declared a heartbeating node LOST"
        assert a.sweep() == []
    assert _node_state(engine, "n3") is NodeState.READY
    assert _job(engine, job_id)[0] == JobStatus.RUNNING.value
    assert "n3" in b.fresh_nodes()  # B may place jobs on it too
    assert not check_invariants(url, [], None, settled=False)


# -- agent ------------------------------------------------------------------------------------------

STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open('ready', 'w').write('1')\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def sup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Supervisor, WallShift, Clock, Roots]]:
    wall = WallShift(monkeypatch)
    mono = Clock(500.0)
    roots = Roots(tmp_path / "out", tmp_path / "data", tmp_path / "state" / "jobs")
    for p in (roots.output_root, roots.data_root, roots.jobs_root):
        p.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "state" / "agent.db")
    monitor = GpuMonitor(FakeGpus(2, seed=1), interval=60)
    s = Supervisor(store, ProcessRuntime(roots.jobs_root), monitor, roots,
                   base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, poll_interval=0.05,
                   clock=wall.time, mono=mono)
    s.restore()
    try:
        yield s, wall, mono, roots
    finally:
        for pidfile in roots.jobs_root.glob("*/*/child.pid"):
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        store.close()


def _stubborn(s: Supervisor, roots: Roots, job_id: str) -> int:
    s.launch(job_id, 1, JobSpec.from_dict({"command": [sys.executable, "-c", STUBBORN], "output_dir": job_id}), [0])
    wait_for(lambda: (roots.output_root / job_id / "ready").exists(), 10, "the job to ignore SIGTERM")
    pid_file = roots.jobs_root / job_id / "1" / "child.pid"
    return int(wait_for(lambda: pid_file.read_text() if pid_file.exists() else None, 10, "child.pid"))


def _ticks_until_ended(s: Supervisor, job_id: str, timeout: float = 10) -> None:
    def ended() -> bool:
        s.tick()
        return s.inspect(job_id).state not in (JobState.PENDING, JobState.RUNNING)
    wait_for(ended, timeout, f"{job_id} to end")


def test_wall_clock_jump_back_does_not_postpone_sigkill(sup: tuple[Supervisor, WallShift, Clock, Roots]) -> None:
    s, wall, mono, roots = sup
    child = _stubborn(s, roots, "jb")
    s.stop("jb", grace_seconds=2)
    s.tick()
    assert pid_alive(child)  # SIGTERM is ignored; the grace period runs
    wall.jump(-HOUR)  # NTP steps the clock back an hour during the grace period
    mono.advance(2.5)  # ... while 2.5 s really pass
    _ticks_until_ended(s, "jb")
    done = s.inspect("jb")
    assert done.state is JobState.STOPPED and done.signal == signal.SIGKILL, done
    assert not pid_alive(child)


def test_wall_clock_jump_forward_keeps_the_grace_period(sup: tuple[Supervisor, WallShift, Clock, Roots]) -> None:
    s, wall, mono, roots = sup
    child = _stubborn(s, roots, "jf")
    s.stop("jf", grace_seconds=30)
    wall.jump(+HOUR)  # the wall deadline is long past, but only 1 s of the 30 s grace has passed
    mono.advance(1.0)

    def still_graced() -> bool:
        s.tick()
        return pid_alive(child) and s.inspect("jf").state is JobState.RUNNING
    holds(still_graced, 0.5, "the job alive within its grace period")
    mono.advance(30.0)
    _ticks_until_ended(s, "jf")
    assert s.inspect("jf").signal == signal.SIGKILL


def test_stop_deadline_persisted_for_a_restarted_agent(sup: tuple[Supervisor, WallShift, Clock, Roots]) -> None:
    """An agent restarted during a grace period takes what is left of the persisted wall deadline."""
    s, wall, mono, roots = sup
    child = _stubborn(s, roots, "jr")
    s.stop("jr", grace_seconds=3)
    rec = s.inspect("jr")
    assert rec.stop_deadline is not None and abs(rec.stop_deadline - (wall.time() + 3)) < 1
    # A new supervisor (the agent restarted) with a new monotonic origin.
    mono2 = Clock(9.0)
    s2 = Supervisor(s.store, ProcessRuntime(roots.jobs_root), s.gpus, roots, base_env=s.base_env,
                    clock=wall.time, mono=mono2)
    s2.restore()
    assert pid_alive(child) and s2.inspect("jr").state is JobState.RUNNING
    mono2.advance(5.0)
    _ticks_until_ended(s2, "jr")
    assert s2.inspect("jr").signal == signal.SIGKILL
