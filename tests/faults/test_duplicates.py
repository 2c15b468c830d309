"""Matrix 5: duplicate, late and reordered messages, sent directly over gRPC to real daemons.

- Agent.Launch of one (job, attempt) from many threads at once: one record, one process/container.
- Agent.Launch / Stop / Acknowledge replayed in duplicate and out of order across two attempts
  (and across an agent restart): no state goes backwards, no second process/container, an old
  attempt is refused (FAILED_PRECONDITION) or the call is a no-op that returns what is recorded.
- Fleet.Heartbeat replayed with stale or lying digests against a real coordinator: a digest can
  neither end a running job nor revive or change an ended one; unknown attempts are ignored;
  an unknown node is told to register again.

Every test ends with the invariants (tests/invariants.py), whose history check proves that no
attempt's state went backwards in the agent's event log or the coordinator's audit events; the
last test plants duplicates and leftovers by hand to show that the checker does see them.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from gpufleet.agent.runtime.process import proc_start_marker
from gpufleet.agent.states import JobState
from gpufleet.agent.store import JobRecord, Store
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.states import JobStatus

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from tests.faults import containers, gated, release, remove_containers, runs, settle, sqlite_url
from tests.harness import AgentProc, CoordinatorProc, state_name, wait_for
from tests.integration.test_coordinator_reconcile import agent_attempts, get_job, register, wait_job
from tests.invariants import assert_invariants, check_invariants
from tests.placing import assign

RUNTIMES = ["process", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture
def rt_agent(request: pytest.FixtureRequest,
             agent_factory: Callable[..., AgentProc]) -> Iterator[tuple[AgentProc, Any]]:
    """An agent on the parametrised runtime, and the docker client (None for the process runtime)."""
    runtime = request.param
    if runtime != "docker":
        yield agent_factory("a"), None
        return
    dockerd = request.getfixturevalue("dockerd")
    request.getfixturevalue("tiny_image")
    a = agent_factory("a", runtime="docker", docker_host=dockerd.base_url)
    yield a, dockerd.client
    remove_containers(dockerd.client, [a.node_name])


def _launch(a: AgentProc, job_id: str, attempt: int, out: str, gpus: list[int], runtime: str) -> pb.JobStatus:
    return a.stub.Launch(apb.LaunchRequest(job_id=job_id, attempt=attempt, gpu_indices=gpus,
                                           spec=pb.JobSpec(output_dir=out, **gated(runtime))), timeout=30)


def _code(fn: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def _stop(a: AgentProc, job_id: str, attempt: int = 0, grace: int = 5) -> pb.JobStatus:
    return a.stub.Stop(apb.StopRequest(job_id=job_id, attempt=attempt, grace_seconds=grace), timeout=30)


def _ack(a: AgentProc, job_id: str, attempt: int) -> bool:
    return a.stub.Acknowledge(apb.AcknowledgeRequest(job_id=job_id, attempt=attempt), timeout=30).dropped


def _containers(client: Any, job_id: str) -> list[dict[str, Any]]:
    return [] if client is None else containers(client, job_id=job_id)


@pytest.mark.parametrize("rt_agent", RUNTIMES, indirect=True)
def test_concurrent_duplicate_launches_make_one_job(rt_agent: tuple[AgentProc, Any]) -> None:
    a, client = rt_agent
    runtime = "docker" if client is not None else "process"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _launch(a, "dup", 1, "dup", [2], runtime), range(8)))
    assert {(s.job_id, s.attempt) for s in answers} == {("dup", 1)}
    ids = {s.runtime_id for s in answers if s.runtime_id}
    assert len(ids) == 1, ids  # every answer that names the process/container names the same one
    st = a.wait_state("dup", "RUNNING")
    assert st.runtime_id in ids
    assert [j.job_id for j in a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs] == ["dup"]
    wait_for(lambda: runs(a, "dup") == 1, 10, "the job's first line")
    release(a, "dup", 0)
    done = a.wait_state("dup", "SUCCEEDED")
    assert done.runtime_id == st.runtime_id and runs(a, "dup") == 1
    assert len(_containers(client, "dup")) <= 1
    settle(None, {a.node_name: a.state_dir}, client)


@pytest.mark.slow
@pytest.mark.parametrize("rt_agent", RUNTIMES, indirect=True)
def test_replayed_and_reordered_launch_stop_ack(rt_agent: tuple[AgentProc, Any]) -> None:
    a, client = rt_agent
    runtime = "docker" if client is not None else "process"
    agents = {a.node_name: a.state_dir}
    j = "replay"
    FP, AB = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED

    first = _launch(a, j, 1, "r1", [0], runtime)
    one = a.wait_state(j, "RUNNING")
    wait_for(lambda: runs(a, "r1") == 1, 10, "attempt 1's first line")
    # Duplicates of the same attempt, even with other GPUs: the existing job, nothing new.
    for gpus in ([0], [2], []):
        again = _launch(a, j, 1, "r1", gpus, runtime)
        assert (again.attempt, again.runtime_id, list(again.gpu_indices)) == (1, one.runtime_id, [0])
    assert first.attempt == 1
    assert _code(lambda: _ack(a, j, 1)) == FP  # a running attempt is never acknowledged
    assert _code(lambda: _launch(a, j, 2, "r2", [1], runtime)) == AB  # attempt 1 still runs: retry later
    assert runs(a, "r2") == 0

    # Stop attempt 1, then the same Stop again (and one with another grace): no-ops.
    stopped = _stop(a, j, 1)
    stopped = a.wait_state(j, "STOPPED") if stopped.state != pb.AGENT_JOB_STATE_STOPPED else stopped
    for grace in (5, 0):
        dup = _stop(a, j, 1, grace)
        assert (state_name(dup.state), dup.finished_at, dup.exit_code) == (
            "STOPPED", stopped.finished_at, stopped.exit_code)

    two = _launch(a, j, 2, "r2", [0], runtime)  # attempt 2 takes the freed GPU
    assert two.attempt == 2
    a.wait_state(j, "RUNNING")
    # Late messages about attempt 1 change nothing, and never touch attempt 2.
    late = _launch(a, j, 1, "r1", [0], runtime)
    assert (late.attempt, state_name(late.state), late.finished_at) == (1, "STOPPED", stopped.finished_at)
    late_stop = _stop(a, j, 1)
    assert (late_stop.attempt, state_name(late_stop.state)) == (1, "STOPPED")
    cur = a.inspect(j)
    assert (cur.attempt, state_name(cur.state)) == (2, "RUNNING")
    assert _ack(a, j, 1) and not _ack(a, j, 1)  # the second Acknowledge is a harmless "already gone"
    assert _code(lambda: _launch(a, j, 1, "r1", [0], runtime)) == FP  # older than attempt 2
    assert _code(lambda: _stop(a, j, 1)) == grpc.StatusCode.NOT_FOUND  # forgotten, nothing to stop
    assert _code(lambda: _ack(a, j, 2)) == FP  # attempt 2 still runs
    assert _code(lambda: _launch(a, j, 3, "r3", [1], runtime)) == AB

    # The fence outlives a restart of the agent.
    a.restart()
    assert _code(lambda: _launch(a, j, 1, "r1", [0], runtime)) == FP
    cur = a.inspect(j)
    assert (cur.attempt, state_name(cur.state)) == (2, "RUNNING")

    wait_for(lambda: runs(a, "r2") == 1, 10, "attempt 2's first line")
    release(a, "r2", 0)
    done = a.wait_state(j, "SUCCEEDED")
    # After the end: Stop is a no-op returning the end, Launch returns the record.
    assert state_name(_stop(a, j).state) == "SUCCEEDED"
    again = _launch(a, j, 2, "r2", [0], runtime)
    assert (state_name(again.state), again.finished_at) == ("SUCCEEDED", done.finished_at)
    assert _ack(a, j, 2) and not _ack(a, j, 2)
    assert _code(lambda: _launch(a, j, 2, "r2", [0], runtime)) == FP  # acknowledged: never again
    assert _code(lambda: a.inspect(j)) == grpc.StatusCode.NOT_FOUND

    assert runs(a, "r1") == 1 and runs(a, "r2") == 1 and runs(a, "r3") == 0
    assert agent_attempts(a) == {(j, 1), (j, 2)}
    assert not _containers(client, j)  # both acknowledged: both removed
    settle(None, agents, client)


def _hb(fleet: coordinator_pb2_grpc.FleetStub, node: str, gpus: Any, *digests: tuple[str, int, str]
        ) -> cpb.HeartbeatResponse:
    jobs = [cpb.JobDigest(job_id=j, attempt=n, state=pb.AgentJobState.Value("AGENT_JOB_STATE_" + s))
            for j, n, s in digests]
    return fleet.Heartbeat(cpb.HeartbeatRequest(node_name=node, gpus=gpus, jobs=jobs), timeout=10)


def _digests(ds: Any) -> set[tuple[str, int]]:
    return {(d.job_id, d.attempt) for d in ds}


@pytest.mark.slow
def test_stale_and_reordered_heartbeats_move_nothing_backwards(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc]) -> None:
    c = coordinator_factory(node_timeout=15)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    fleet = coordinator_pb2_grpc.FleetStub(c.channel)
    gpus = a.stub.GetNode(apb.GetNodeRequest(), timeout=5).gpus  # the node's real snapshot

    def submit(out: str) -> str:
        spec = pb.JobSpec(output_dir=out, **gated("process"))
        return c.stub.SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=1), timeout=10).job_id

    done_id = submit("hb-done")
    wait_for(lambda: runs(a, "hb-done") == 1, 20, "the first job's first line")
    release(a, "hb-done", 0)
    wait_job(c, done_id, "SUCCESS")

    def forgotten(job_id: str) -> bool:
        try:
            a.inspect(job_id)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    wait_for(lambda: forgotten(done_id), 20, "the ended job acknowledged and dropped")
    run_id = submit("hb-run")
    wait_job(c, run_id, "RUNNING")
    a.wait_state(run_id, "RUNNING")

    # A stale heartbeat still carrying the ended job as live: it is told to stop it (fencing; a
    # no-op on an agent that no longer has it), and the job stays SUCCESS with its exit code.
    for state in ("RUNNING", "PENDING"):
        r = _hb(fleet, a.node_name, gpus, (done_id, 1, state), (run_id, 1, "RUNNING"))
        assert _digests(r.stop) == {(done_id, 1)} and not r.reregister
        j = get_job(c, done_id)
        assert (j.status_name, j.exit_code) == ("SUCCESS", 0)
    # Its end reported again, late: acknowledged again, nothing else.
    r = _hb(fleet, a.node_name, gpus, (done_id, 1, "SUCCEEDED"))
    assert _digests(r.acknowledged) == {(done_id, 1)} and not r.stop
    # A digest claiming the running job ended (out of order / lying): the coordinator asks the
    # agent, which says RUNNING, so the job stays RUNNING.
    for state in ("SUCCEEDED", "FAILED", "STOPPED", "LOST"):
        r = _hb(fleet, a.node_name, gpus, (run_id, 1, state))
        assert not r.acknowledged and not r.stop
        assert get_job(c, run_id).status_name == "RUNNING"
    # Attempts the coordinator never made, and a heartbeat that lists nothing: ignored.
    r = _hb(fleet, a.node_name, gpus, (run_id, 2, "RUNNING"), (run_id, 7, "SUCCEEDED"), ("nosuchjob", 1, "RUNNING"))
    assert not r.stop and not r.acknowledged
    _hb(fleet, a.node_name, gpus)
    assert get_job(c, run_id).status_name == "RUNNING" and a.inspect(run_id).state == pb.AGENT_JOB_STATE_RUNNING
    # An unknown node is told to register; it does not appear in the fleet.
    assert _hb(fleet, "ghost-node", gpus, (run_id, 1, "RUNNING")).reregister
    assert {n.name for n in c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes} == {a.node_name}
    # A replayed Launch of the running attempt straight to the agent: the same process.
    st = a.inspect(run_id)
    replay = a.stub.Launch(apb.LaunchRequest(job_id=run_id, attempt=1, gpu_indices=list(st.gpu_indices),
                                             spec=pb.JobSpec(output_dir="hb-run", **gated("process"))), timeout=30)
    assert replay.runtime_id == st.runtime_id

    release(a, "hb-run", 4)
    end = wait_job(c, run_id, "SUCCESS", "FAILED", "STOPPED")
    assert (end.status_name, end.exit_code) == ("FAILED", 4)
    # The live digest of the ended job arriving late: fenced, not revived.
    r = _hb(fleet, a.node_name, gpus, (run_id, 1, "RUNNING"))
    assert _digests(r.stop) == {(run_id, 1)}
    end2 = get_job(c, run_id)
    assert (end2.status_name, end2.exit_code, end2.finished_at) == ("FAILED", 4, end.finished_at)
    # A replayed Launch of the acknowledged attempt straight to the agent: refused, nothing runs.
    wait_for(lambda: forgotten(run_id), 20, "the failed job acknowledged and dropped")
    with pytest.raises(grpc.RpcError) as e:
        a.stub.Launch(apb.LaunchRequest(job_id=run_id, attempt=1, spec=pb.JobSpec(
            output_dir="hb-run", **gated("process"))), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert runs(a, "hb-done") == 1 and runs(a, "hb-run") == 1
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 2
    settle(sqlite_url(c), {a.node_name: a.state_dir})


def test_the_checker_sees_planted_duplicates_and_leftovers(tmp_path: Path) -> None:
    """The invariants are only worth something if they fail: plant each kind of fault by hand in a
    real coordinator database, two real agent stores and a handle file, and find each one named."""
    engine = dbengine.make_engine(f"sqlite:///{tmp_path / 'coordinator.db'}")
    dbengine.migrate(engine)
    try:
        with engine.begin() as conn:
            repo.upsert_node(conn, "n1", address="127.0.0.1:1", labels={}, agent_version="t", runtime="process",
                             gpus=[{"index": 0, "healthy": True}])
            for job_id in ("g1", "g2"):  # one GPU given to two RUNNING jobs
                repo.create_job(conn, spec={"output_dir": job_id}, job_id=job_id)
                assign(conn, job_id, "n1", [0], actor="test")
            repo.create_job(conn, spec={"output_dir": "dup"}, job_id="dup")
            repo.create_job(conn, spec={"output_dir": "dup"}, job_id="dupb")
            conn.execute(sa.text("UPDATE jobs SET root_id = 'dup', attempt = 2 WHERE id = 'dupb'"))
            for job_id, status, code in (("acked", JobStatus.SUCCESS, None), ("mis", JobStatus.FAILED, 2)):
                repo.create_job(conn, spec={"output_dir": job_id}, job_id=job_id)
                assign(conn, job_id, "n9", [], actor="test")
                repo.set_job_status(conn, job_id, status, exit_code=code, actor="test")
            repo.mark_acked(conn, ["acked"])
    finally:
        engine.dispose()
    dirs = {"n8": tmp_path / "a" / "state", "n9": tmp_path / "b" / "state"}
    stores = {n: Store(d / "agent.db") for n, d in dirs.items()}
    try:
        def record(store: Store, job_id: str, attempt: int, **changes: Any) -> None:
            rec = JobRecord(job_id=job_id, attempt=attempt, state=JobState.PENDING, spec={}, gpu_indices=[],
                            runtime="process", created_at=time.time())
            store.insert(rec)
            if changes:
                store.update(rec, **changes)
        record(stores["n8"], "x", 1, state=JobState.RUNNING, runtime_id="1")
        record(stores["n9"], "x", 2)
        for job_id in ("acked", "mis"):
            record(stores["n9"], job_id, 1, state=JobState.RUNNING, runtime_id="1")
            stores["n9"].update(stores["n9"].get(job_id, 1), state=JobState.SUCCEEDED, exit_code=0,
                                finished_at=time.time())
    finally:
        for s in stores.values():
            s.close()
    # A live process (this one) that a handle file names as a job nobody tracks.
    job_dir = dirs["n8"] / "jobs" / "ghost" / "1"
    job_dir.mkdir(parents=True)
    (job_dir / "handle.json").write_text(json.dumps({"pid": os.getpid(), "job_id": "ghost", "attempt": 1,
                                                     "start_marker": proc_start_marker(os.getpid())}))

    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    moment = "\n".join(check_invariants(url, dirs, None, settled=False))
    for needle in ("GPU 0 of node n1 given to RUNNING g1 and g2", "job root dup has 2 live",
                   "job x has 2 live attempts across agents", "job mis: coordinator FAILED (exit 2) but agent n9 says "
                   "SUCCEEDED"):
        assert needle in moment, (needle, moment)
    assert "acknowledged" not in moment and "ghost" not in moment  # those wait for `settled`
    settled = "\n".join(check_invariants(url, dirs, None, settled=True))
    for needle in ("job acked: acknowledged but agent n9 still holds it", "x attempt 2 stuck PENDING",
                   "x attempt 1 RUNNING but no live container/process",
                   "process " + str(os.getpid()) + " of ghost attempt 1 runs but the coordinator has no such job",
                   "of ghost attempt 1 runs but no agent tracks it as live"):
        assert needle in settled, (needle, settled)
    with pytest.raises(AssertionError, match="invariant violation"):
        assert_invariants(url, dirs, settled=False)
