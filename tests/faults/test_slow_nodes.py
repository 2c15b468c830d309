"""What the soak found about slow, silent and returning nodes (bench/soak.py findings B, E, F, G).

The coordinator's parts run in this process over a real SQLite database; the agents are real gRPC
servers on loopback: a real agent where one must run a job, and `HeldAgent`, an Agent server whose
answers the test holds back, for a node that has stopped answering (a partition as seen by the
caller: the call neither fails nor returns). Held calls are released at the end of every test.

- B: one node that does not answer its Launch must not hold up the placements of everybody else,
  and a node whose Launch cannot be delivered gets nothing more until it is heard from again.
- E: a node that (re-)registers is offered to the scheduler only once a heartbeat answer shows
  nothing left to fence: a fenced attempt may still hold GPUs, and the agent refuses a new attempt
  of a job while an older one is live (ABORTED, a transient refusal: the job is queued again).
- F: a heartbeat that reports ended jobs waits for their end to be recorded only so long (the
  Inspect and probe run on threads of their own), and those threads are never queued behind a
  reconcile pass that is waiting on slow nodes.
- G: a node that cannot be reached costs the reconcile pass one call, not one Inspect per job.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.fleet import Digest, Fleet
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.scheduler import Scheduler
from gpufleet.coordinator.states import JobStatus

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from tests.harness import AgentProc, wait_for
from tests.placing import assign

PY = sys.executable
GPUS = [{"index": i, "uuid": f"GPU-{i}", "name": "fake", "healthy": True} for i in range(4)]
SLEEPER = [PY, "-c", "import time; time.sleep(60)"]


class HeldAgent(agent_pb2_grpc.AgentServicer):
    """An Agent whose Launch and Inspect wait until `release()`; ListJobs answers `list_code`."""

    def __init__(self, launch_code: grpc.StatusCode | None = None,
                 list_code: grpc.StatusCode = grpc.StatusCode.OK, hold_list: bool = False) -> None:
        self.released = threading.Event()
        self.hold_list = hold_list
        self.launch_code = launch_code
        self.list_code = list_code
        self.calls: dict[str, int] = {}
        self.waiting: list[grpc.ServicerContext] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_AgentServicer_to_server(self, self.server)
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def _hold(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.waiting.append(context)
        self.released.wait(60)

    def callers_still_waiting(self) -> int:
        """Held calls whose caller has not given up (no deadline passed, nothing cancelled)."""
        with self._lock:
            return sum(1 for c in self.waiting if c.is_active())

    def release(self) -> None:
        self.released.set()

    def Launch(self, request: apb.LaunchRequest, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._count("Launch")
        if self.launch_code is not None:
            context.abort(self.launch_code, "job x: attempt 1 is still RUNNING; stop it before launching attempt 2")
        self._hold(context)
        return pb.JobStatus(job_id=request.job_id, attempt=request.attempt, state=pb.AGENT_JOB_STATE_RUNNING)

    def Inspect(self, request: apb.InspectRequest, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._count("Inspect")
        self._hold(context)
        return pb.JobStatus(job_id=request.job_id, attempt=request.attempt, state=pb.AGENT_JOB_STATE_SUCCEEDED,
                            exit_code=0)

    def ListJobs(self, request: apb.ListJobsRequest, context: grpc.ServicerContext) -> apb.ListJobsResponse:  # noqa: N802
        self._count("ListJobs")
        if self.hold_list:
            self._hold(context)
        if self.list_code != grpc.StatusCode.OK:
            context.abort(self.list_code, "agent is restarting")
        return apb.ListJobsResponse()

    def Acknowledge(self, request: apb.AcknowledgeRequest, context: grpc.ServicerContext) -> apb.AcknowledgeResponse:  # noqa: N802
        self._count("Acknowledge")
        return apb.AcknowledgeResponse()

    def close(self) -> None:
        self.release()
        self.server.stop(grace=None)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = dbengine.make_engine(f"sqlite:///{tmp_path / 'coordinator.db'}")
    dbengine.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def held() -> Iterator[Callable[..., HeldAgent]]:
    made: list[HeldAgent] = []

    def make(**kw: Any) -> HeldAgent:
        made.append(HeldAgent(**kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def pool() -> Iterator[AgentPool]:
    p = AgentPool()
    yield p
    p.close()


def _fleet(engine: sa.Engine, pool: AgentPool, woken: list[int] | None = None) -> Fleet:
    rec = Reconciler(engine, pool)
    return Fleet(engine, rec, lambda: woken.append(1) if woken is not None else None, node_timeout=60)


def _join(f: Fleet, name: str, address: str) -> None:
    f.register(name, address, {"node": name}, "test", "process", GPUS)
    assert not f.heartbeat(name, GPUS, []).stop


def _queue(engine: sa.Engine, node: str, command: list[str] | None = None) -> str:
    with engine.begin() as conn:
        return repo.create_job(conn, spec={"command": command or SLEEPER, "output_dir": f"out-{node}"}, gpus=1,
                               constraints={"node": node}).id


def _running(engine: sa.Engine, node: str) -> str:
    job_id = _queue(engine, node)
    with engine.begin() as conn:
        assert assign(conn, job_id, node, [0], actor="test")
    return job_id


def _job(engine: sa.Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return repo.get_job(conn, job_id)


# -- B ----------------------------------------------------------------------------------------------


def test_a_node_that_does_not_answer_holds_up_no_other_placement(engine: sa.Engine, pool: AgentPool,
                                                                 held: Callable[..., HeldAgent],
                                                                 agent_factory: Callable[..., AgentProc]) -> None:
    silent, good = held(), agent_factory("good")
    f = _fleet(engine, pool)
    _join(f, "silent", silent.addr)
    _join(f, "good", good.addr)
    s = Scheduler(engine, pool, f.fresh_nodes, node_unreachable=f.unreachable)
    try:
        first = [_queue(engine, "silent"), _queue(engine, "good")]
        s.run_once()
        # The pass is over while the silent node's Launch is still waiting for its answer (its
        # caller has not given up)...
        assert silent.callers_still_waiting() == 1
        assert _job(engine, first[0]).observed_state is None
        assert _job(engine, first[1]).observed_state in ("PENDING", "RUNNING")
        # ...so the next job placed on the good node is launched without waiting for it either.
        second = _queue(engine, "good")
        s.run_once()
        assert silent.callers_still_waiting() == 1
        assert _job(engine, second).observed_state in ("PENDING", "RUNNING")
        assert good.stub.Inspect(apb.InspectRequest(job_id=second), timeout=5).state == pb.AGENT_JOB_STATE_RUNNING
        # When the late answer comes, it is recorded.
        silent.release()
        wait_for(lambda: _job(engine, first[0]).observed_state == "RUNNING", 20, "the late Launch answer stored")
    finally:
        s.close()


def test_a_node_whose_launch_cannot_be_delivered_gets_nothing_more_until_it_heartbeats(
        engine: sa.Engine, pool: AgentPool, held: Callable[..., HeldAgent]) -> None:
    gone = held()
    f = _fleet(engine, pool)
    _join(f, "gone", gone.addr)
    gone.server.stop(grace=None)  # the address now refuses connections: UNAVAILABLE
    s = Scheduler(engine, pool, f.fresh_nodes, node_unreachable=f.unreachable)
    try:
        job_id = _queue(engine, "gone")
        s.run_once()
        wait_for(lambda: "gone" not in f.fresh_nodes(), 20, "the node set aside after the failed Launch")
        j = _job(engine, job_id)
        # Not ended: the agent may have recorded it; the reconciler re-sends Launch, node loss ends it.
        assert j.status is JobStatus.RUNNING and j.node == "gone" and j.observed_state is None
        later = _queue(engine, "gone")
        s.run_once()
        assert _job(engine, later).status is JobStatus.QUEUED
        assert not f.heartbeat("gone", GPUS, []).stop
        assert "gone" in f.fresh_nodes()  # heard from again: offered again
    finally:
        s.close()


def test_a_launch_refused_because_an_older_attempt_is_still_live_queues_the_job_again(
        engine: sa.Engine, pool: AgentPool, held: Callable[..., HeldAgent]) -> None:
    busy = held(launch_code=grpc.StatusCode.ABORTED)
    f = _fleet(engine, pool)
    _join(f, "busy", busy.addr)
    s = Scheduler(engine, pool, f.fresh_nodes)
    try:
        job_id = _queue(engine, "busy")
        s.run_once()
        wait_for(lambda: _job(engine, job_id).status is not JobStatus.RUNNING, 20, "the refused launch recorded")
        j = _job(engine, job_id)
        assert j.status is JobStatus.STOPPED and j.superseded_by, (j.status, j.error_message)
        assert "LAUNCH_FAILED" in j.error_message and "still RUNNING" in j.error_message
        nxt = _job(engine, j.superseded_by)
        assert nxt.retries_used == 0  # launch trouble does not use up the user's retries
    finally:
        s.close()


# -- E ----------------------------------------------------------------------------------------------


def test_a_returning_node_is_offered_only_after_its_heartbeat_fenced_what_must_not_run(
        engine: sa.Engine, pool: AgentPool) -> None:
    woken: list[int] = []
    f = _fleet(engine, pool, woken)
    _join(f, "n1", "127.0.0.1:1")
    old = _running(engine, "n1")
    with engine.begin() as conn:  # the coordinator ended it (e.g. the node was lost meanwhile)
        repo.set_job_status(conn, old, JobStatus.STOPPED, reason="test", actor="test")

    f.register("n1", "127.0.0.1:1", {"node": "n1"}, "test", "process", GPUS)  # the agent is back
    assert "n1" not in f.fresh_nodes()  # nothing heard since Register: not offered
    answer = f.heartbeat("n1", GPUS, [Digest(old, 1, "RUNNING")])
    assert [d.job_id for d in answer.stop] == [old]
    assert "n1" not in f.fresh_nodes()  # the fenced attempt may still hold its GPU
    answer = f.heartbeat("n1", GPUS, [Digest(old, 1, "RUNNING")])  # still stopping
    assert answer.stop and "n1" not in f.fresh_nodes()
    woken.clear()
    answer = f.heartbeat("n1", GPUS, [Digest(old, 1, "STOPPED")])
    assert not answer.stop and "n1" in f.fresh_nodes()
    assert woken, "the scheduler is woken when a node becomes usable"


# -- F ----------------------------------------------------------------------------------------------


def test_a_heartbeat_reporting_an_ended_job_answers_before_the_job_is_inspected(
        engine: sa.Engine, pool: AgentPool, held: Callable[..., HeldAgent]) -> None:
    slow = held()
    f = _fleet(engine, pool)
    _join(f, "slow", slow.addr)
    job_id = _running(engine, "slow")
    try:
        answer = f.heartbeat("slow", GPUS, [Digest(job_id, 1, "SUCCEEDED")])
        assert not answer.stop and not answer.reregister
        # The heartbeat has answered; the Inspect it started is still waiting on the agent.
        wait_for(lambda: slow.callers_still_waiting() == 1, 10, "the Inspect to reach the agent")
        assert _job(engine, job_id).status is JobStatus.RUNNING
        # A second heartbeat with the same news does not start a second Inspect.
        f.heartbeat("slow", GPUS, [Digest(job_id, 1, "SUCCEEDED")])
        assert slow.calls.get("Inspect") == 1
        slow.release()
        wait_for(lambda: _job(engine, job_id).status is JobStatus.SUCCESS, 20, "the end recorded")
    finally:
        f.reconciler.close()


def test_an_ended_job_is_recorded_even_during_a_stuck_pass(
        engine: sa.Engine, pool: AgentPool, held: Callable[..., HeldAgent]) -> None:
    """Was (the soak): the sync shared the reconcile pass's threads. With the pass waiting on slow
    nodes, the Inspect started only after the heartbeat had answered, the node was cut off meanwhile,
    it was declared LOST, and jobs that had completed ran again. Now (issue 12) the heartbeat never
    waits on an agent call (the agent's outbox push is what records an end, and replays it after a
    cut), and the heartbeat's sync, the safety net, still runs on its own threads, not behind the
    stuck pass."""
    f = _fleet(engine, pool)
    rec = f.reconciler
    stuck = [held(hold_list=True) for _ in range(20)]  # more nodes than the pass has threads
    for i, h in enumerate(stuck):
        _join(f, f"stuck{i}", h.addr)
        _running(engine, f"stuck{i}")
    fast = held()
    fast.release()  # answers at once: SUCCEEDED, exit 0
    _join(f, "fast", fast.addr)
    passing = threading.Thread(target=rec.run_once, daemon=True)
    try:
        passing.start()
        wait_for(lambda: sum(h.callers_still_waiting() for h in stuck) >= 16, 20, "the pass stuck on slow nodes")
        job_id = _running(engine, "fast")  # after the pass read its jobs: only the heartbeat can record it
        answer = f.heartbeat("fast", GPUS, [Digest(job_id, 1, "SUCCEEDED")])
        assert not answer.stop
        wait_for(lambda: _job(engine, job_id).status is JobStatus.SUCCESS, 20,
                 "the end recorded though the pass is stuck")
    finally:
        for h in stuck:
            h.release()
        passing.join(30)
        rec.close()


# -- G ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_unreachable_node_costs_the_reconcile_pass_one_call(engine: sa.Engine, pool: AgentPool,
                                                               held: Callable[..., HeldAgent],
                                                               code: grpc.StatusCode) -> None:
    down = held(list_code=code)
    f = _fleet(engine, pool)
    _join(f, "down", down.addr)
    jobs = [_running(engine, "down") for _ in range(4)]
    rec = f.reconciler
    try:
        rec.run_once()
        assert down.calls == {"ListJobs": 1}  # no Inspect per job
        assert all(_job(engine, j).status is JobStatus.RUNNING for j in jobs)  # nothing guessed
    finally:
        rec.close()


def test_a_node_that_answers_listjobs_with_another_error_is_asked_per_job(engine: sa.Engine, pool: AgentPool,
                                                                          held: Callable[..., HeldAgent]) -> None:
    odd = held(list_code=grpc.StatusCode.INTERNAL)
    f = _fleet(engine, pool)
    _join(f, "odd", odd.addr)
    job_id = _running(engine, "odd")
    odd.release()  # Inspect answers at once: SUCCEEDED, exit 0
    rec = f.reconciler
    try:
        rec.run_once()
        assert odd.calls.get("Inspect") == 1
        assert _job(engine, job_id).status is JobStatus.SUCCESS
    finally:
        rec.close()
