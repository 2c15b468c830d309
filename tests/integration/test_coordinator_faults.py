"""Faults on real processes: the coordinator SIGKILLed at chosen points (failpoints), an agent
SIGKILLed under a running job, a node lost and coming back (requeue, then fencing), and two
coordinator replicas sharing one PostgreSQL under 500 jobs.

Helpers (gated jobs, waits) come from test_coordinator_reconcile; see its docstring.
"""
from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import pid_alive, release, runs, wait_for
from tests.integration.test_coordinator_reconcile import (
    GATED,
    agent_attempts,
    agent_running,
    create_model,
    get_job,
    holds,
    metric_row_counts,
    node,
    register,
    sqlite_engine,
    states_of,
    submit,
    wait_job,
    wait_model,
)

PY = sys.executable
ONCE = [PY, "-c", "open('runs', 'a').write('run\\n')"]


def dead(c) -> bool:  # type: ignore[no-untyped-def]
    return c.daemon.proc is not None and c.daemon.proc.poll() is not None


def restart_without_failpoints(c) -> None:  # type: ignore[no-untyped-def]
    c.daemon.env = {}
    c.kill()
    c.start()


def test_coordinator_killed_between_assignment_and_launch_runs_the_job_once(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(env={"GPUFLEET_FAILPOINTS": "coordinator.assign.after_commit=kill"})
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, ONCE, "once")
    wait_for(lambda: dead(c), 30, "the coordinator to die at coordinator.assign.after_commit")
    assert c.daemon.proc.returncode == -9
    # The assignment was committed, Launch never sent.
    engine = sqlite_engine(c)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, node, observed_state, attempt FROM jobs WHERE id = :j"),
                               {"j": job.job_id}).one()
    finally:
        engine.dispose()
    assert (row.status, row.node, row.observed_state, row.attempt) == ("RUNNING", a.node_name, None, 1)
    assert not a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs

    restart_without_failpoints(c)
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0 and done.attempt == 1, done
    assert runs(a, "once") == 1
    assert agent_attempts(a) == {(job.job_id, 1)}
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1


def test_coordinator_killed_mid_metric_ingestion_stores_metrics_once(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(env={"GPUFLEET_FAILPOINTS": "coordinator.metrics.mid_ingest=kill"})
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    m = create_model(c, {"total_epoch": 3, "epoch_seconds": 0.01})
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    job_id = m.current_attempt_id
    wait_for(lambda: dead(c), 30, "the coordinator to die at coordinator.metrics.mid_ingest")
    engine = sqlite_engine(c)
    try:
        assert metric_row_counts(engine, job_id) == {"metrics_train": 0, "metrics_validation": 0, "metrics_test": 0}
        restart_without_failpoints(c)
        m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "training outcome after restart")
        assert states_of(m) == ("COMPLETED", "COMPLETED", "READY") and m.step1_metric_saved and m.best_epoch
        assert get_job(c, job_id).status_name == "SUCCESS"
        assert metric_row_counts(engine, job_id) == {"metrics_train": 6, "metrics_validation": 6, "metrics_test": 0}
    finally:
        engine.dispose()


def test_agent_killed_job_stays_running_and_ends_right(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=15)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "agent-dies")
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    a.kill()
    assert pid_alive(wrapper)
    # Several reconcile passes (0.5 s) cannot inspect the job: it stays RUNNING, the node stays READY.
    holds(lambda: get_job(c, job.job_id).status_name == "RUNNING" and node(c, a.node_name).state_name == "READY",
          2.0, "job RUNNING while its agent is down")
    # Past the node timeout the node is UNREACHABLE, and the job is still RUNNING (silence is not death).
    wait_for(lambda: node(c, a.node_name).state_name == "UNREACHABLE", 30, "node UNREACHABLE")
    assert get_job(c, job.job_id).status_name == "RUNNING"
    a.start()
    release(a, "agent-dies")
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0 and done.attempt == 1, done
    assert runs(a, "agent-dies") == 1
    assert agent_attempts(a) == {(job.job_id, 1)}
    assert node(c, a.node_name).state_name == "READY"


def test_node_lost_requeues_then_fences_the_returning_node(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=3, lost_after=2)
    a = agent_factory("A", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "lost", max_retries=1)
    assert wait_job(c, job.job_id, "RUNNING").node == a.node_name
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    b = agent_factory("B", extra=["--coordinator", c.addr])
    register(c, b, 2)

    a.kill()  # the agent only: its job keeps running on the host
    first = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=20)
    assert first.status_name == "STOPPED" and first.exit_code == -1, first
    assert first.error_message.startswith("NODE_LOST"), first.error_message
    assert node(c, a.node_name).state_name == "UNREACHABLE"
    retry_id = f"{job.job_id}.2"
    assert first.superseded_by == retry_id
    second = wait_job(c, retry_id, "RUNNING")
    assert second.node == b.node_name and second.attempt == 2 and second.retries_used == 1
    assert second.spec.output_dir == "lost-attempt2"  # a fresh folder: never the old attempt's files
    agent_running(b, job.job_id)  # agents know attempts by root id + attempt number
    wait_for(lambda: runs(b, "lost-attempt2") == 1, 10, "attempt 2 to start its work on B")
    assert pid_alive(wrapper) and runs(a, "lost") == 1

    a.start()  # the node comes back: its attempt 1 is no longer current and gets stopped
    wait_for(lambda: node(c, a.node_name).state_name == "READY", 20, "node A READY again")
    wait_for(lambda: not pid_alive(wrapper), 30, "the stale attempt on A to be fenced")

    def fenced_on_a() -> bool:
        try:
            return a.inspect(job.job_id).state == pb.AGENT_JOB_STATE_STOPPED
        except grpc.RpcError as exc:  # dropped once the coordinator acknowledged the STOPPED
            return exc.code() == grpc.StatusCode.NOT_FOUND
    wait_for(fenced_on_a, 10, "agent A to report its attempt STOPPED")
    assert (a.output_root / "lost" / "release").exists() is False  # it was stopped, never released

    release(b, "lost-attempt2")
    done = wait_job(c, retry_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0
    attempts = {j.job_id: j for j in c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).jobs}
    assert set(attempts) == {job.job_id, retry_id}
    assert Counter(j.status_name for j in attempts.values()) == Counter({"STOPPED": 1, "SUCCESS": 1})
    assert attempts[job.job_id].error_message.startswith("NODE_LOST")  # the first verdict stands
    assert runs(a, "lost") == 1 and runs(b, "lost-attempt2") == 1
    assert agent_attempts(a) == {(job.job_id, 1)} and agent_attempts(b) == {(job.job_id, 2)}


def test_job_canceled_while_its_node_is_unreachable_is_not_requeued(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=3, lost_after=2)
    a = agent_factory("A", extra=["--coordinator", c.addr])
    b = agent_factory("B", extra=["--coordinator", c.addr])
    register(c, a)
    register(c, b, 2)
    job = submit(c, GATED, "cancel-unreachable", max_retries=1)
    placed = wait_job(c, job.job_id, "RUNNING")
    on, other = (a, b) if placed.node == a.node_name else (b, a)
    agent_running(on, job.job_id)
    on.kill()
    c.stub.CancelJob(cpb.JobRef(job_id=job.job_id), timeout=30)  # the stop cannot reach the agent yet
    first = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=20)
    assert first.status_name == "STOPPED"
    assert not first.superseded_by, f"canceled job requeued as {first.superseded_by}"
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1
    assert not other.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs


def test_agent_down_across_a_coordinator_restart_is_inspect_error_once_the_node_is_lost(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=3, lost_after=3)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "inspect-error")
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    a.kill()
    c.kill()
    c.start()  # the agent cannot be asked: no verdict until its node is declared lost
    assert get_job(c, job.job_id).status_name == "RUNNING"
    done = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=20)
    assert done.status_name == "STOPPED" and done.exit_code == -1, done
    assert done.error_message.startswith("SERVER_RESTART_CONTAINER_INSPECT_ERROR"), done.error_message
    assert node(c, a.node_name).state_name == "UNREACHABLE"
    assert pid_alive(wrapper)
    a.start()  # back: its attempt was ended, so it is fenced rather than left running
    wait_for(lambda: node(c, a.node_name).state_name == "READY", 20, "node READY again")
    wait_for(lambda: not pid_alive(wrapper), 30, "the ended attempt to be fenced")
    assert get_job(c, job.job_id).status_name == "STOPPED"
    assert not (a.output_root / "inspect-error" / "release").exists()


def test_on_restart_stop_stops_running_jobs(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory()
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "old-behaviour")
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    c.kill()
    c.daemon.argv += ["--on-restart", "stop"]  # the old system's behaviour, for operators who want it
    c.start()
    done = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=30)
    assert done.status_name == "STOPPED" and done.exit_code == -1, done
    assert done.error_message == "STOPPED_ON_RESTART: --on-restart=stop", done.error_message  # not the user
    wait_for(lambda: not pid_alive(wrapper), 15, "the job's process to be stopped")
    # jobs placed after the start are not touched
    later = submit(c, ONCE, "after-restart")
    assert wait_job(c, later.job_id, "SUCCESS", "FAILED", "STOPPED").status_name == "SUCCESS"


# -- two replicas on one PostgreSQL ----------------------------------------------------------------


@pytest.mark.postgres
def test_replica_does_not_declare_nodes_of_the_other_replica_lost(
        coordinator_factory, agent_factory, pg_url) -> None:  # type: ignore[no-untyped-def]
    c1 = coordinator_factory("c1", database_url=pg_url, node_timeout=2)
    c2 = coordinator_factory("c2", database_url=pg_url, node_timeout=2)
    a = agent_factory("a", extra=["--coordinator", c1.addr])
    register(c1, a)
    job = submit(c1, GATED, "replicas")
    wait_job(c1, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    # the agent heartbeats every 0.5 s: for three node timeouts, neither replica may call it lost
    holds(lambda: node(c2, a.node_name).state_name == "READY" and get_job(c2, job.job_id).status_name == "RUNNING",
          6.0, "node READY and job RUNNING as seen by the other replica")
    release(a, "replicas")
    assert wait_job(c1, job.job_id, "SUCCESS", "FAILED", "STOPPED").status_name == "SUCCESS"


N_JOBS = 500


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_500_jobs_none_placed_twice(coordinator_factory, agent_factory, pg_url) -> None:  # type: ignore[no-untyped-def]
    # A long node timeout: this test is about claiming, not liveness.
    c1 = coordinator_factory("c1", database_url=pg_url, node_timeout=600)
    c2 = coordinator_factory("c2", database_url=pg_url, node_timeout=600)
    agents = [agent_factory(f"a{i}", extra=["--coordinator", c.addr]) for i, c in enumerate((c1, c2, c1))]
    for a, c in zip(agents, (c1, c2, c1), strict=True):
        register(c, a, 1)
    replicas = (c1, c2)

    def one(i: int) -> str:
        return submit(replicas[i % 2], ["/bin/true"], f"j{i}", gpus=0, name=f"j{i}").job_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(N_JOBS)))
    assert len(set(ids)) == N_JOBS

    def successes() -> bool:
        return c1.stub.ListJobs(cpb.ListJobsQuery(status=cpb.JOB_STATUS_CODE_SUCCESS, size=1),
                                timeout=10).total_elements == N_JOBS
    wait_for(successes, 150, f"{N_JOBS} jobs SUCCESS", interval=0.5)

    jobs = []
    for page in range(2):
        jobs += c2.stub.ListJobs(cpb.ListJobsQuery(page=page, size=N_JOBS // 2), timeout=10).jobs
    assert c2.stub.ListJobs(cpb.ListJobsQuery(size=1), timeout=10).total_elements == N_JOBS  # no requeued attempt
    assert {j.job_id for j in jobs} == set(ids)
    assert all(j.attempt == 1 and j.status_name == "SUCCESS" and j.exit_code == 0 for j in jobs)
    by_node = Counter(j.node for j in jobs)
    # Best fit packs GPU-less jobs: where they land matters less than that each landed once.
    assert set(by_node) <= {a.node_name for a in agents}, by_node

    seen: Counter[str] = Counter()
    for a in agents:
        held = agent_attempts(a)
        assert {att for _, att in held} <= {1}
        seen.update(job_id for job_id, _ in held)
        placed_here = {j.job_id for j in jobs if j.node == a.node_name}
        assert {job_id for job_id, _ in held} == placed_here
    assert set(seen) == set(ids) and set(seen.values()) == {1}, [k for k, v in seen.items() if v != 1]
    # every job ran exactly once: one `runs`-free check is the output folder each launch creates
    made = sum(1 for a in agents for i in range(N_JOBS) if (a.output_root / f"j{i}").is_dir())
    assert made == N_JOBS
