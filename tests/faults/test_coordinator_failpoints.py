"""Matrix 2: the coordinator SIGKILLed at each of its failpoints, then restarted without it.

A real coordinator (embedded SQLite) with `GPUFLEET_FAILPOINTS=<fp>=kill` and one real agent
(process runtime, and docker for the launch-side failpoints). After the crash and a clean restart:
exactly one process/container per job attempt (the gated job's `runs` marker, the agent's durable
event log, the containers labelled with the job, a single attempt in the database), the job's true
state and exit code, metrics stored exactly once for `coordinator.metrics.mid_ingest`, and the
invariants (tests/invariants.py) once everything has settled.

Failpoints: coordinator.assign.after_commit (assignment committed, Launch never sent),
coordinator.launch.after_ack (the agent runs it, the coordinator never noted it),
coordinator.reconcile.before_apply (the end observed, not stored), coordinator.metrics.mid_ingest
(dies in the middle of the transaction that ends the job and stores its metrics).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.faults import (
    containers,
    gated,
    release,
    remove_containers,
    restart_clean,
    runs,
    settle,
    sqlite_url,
    wait_dead,
)
from tests.harness import AgentProc, CoordinatorProc, wait_for
from tests.integration.test_coordinator_reconcile import (
    TRAINER,
    agent_attempts,
    get_job,
    get_model,
    register,
    states_of,
    wait_job,
    wait_model,
)

OUT = "cfp"
CASES = [
    ("coordinator.assign.after_commit", "process"),
    ("coordinator.assign.after_commit", "docker"),
    ("coordinator.launch.after_ack", "process"),
    ("coordinator.launch.after_ack", "docker"),
    ("coordinator.reconcile.before_apply", "process"),
    ("coordinator.metrics.mid_ingest", "process"),
]


def _params() -> Iterator[Any]:
    for fp, runtime in CASES:
        marks: list[Any] = [pytest.mark.slow]
        if runtime == "docker":
            marks.append(pytest.mark.docker)
        yield pytest.param(fp, runtime, id=f"{fp.removeprefix('coordinator.')}-{runtime}", marks=marks)


@pytest.fixture
def docker_env(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.node.callspec.params["runtime"] != "docker":
        yield {}
        return
    dockerd = request.getfixturevalue("dockerd")
    request.getfixturevalue("tiny_image")
    names: list[str] = []
    yield {"docker_host": dockerd.base_url, "client": dockerd.client, "names": names}
    remove_containers(dockerd.client, names)


def _db_job(c: CoordinatorProc, job_id: str) -> sa.Row[Any]:
    engine = sa.create_engine(sqlite_url(c))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT status, node, observed_state, attempt FROM jobs WHERE id = :j"),
                                {"j": job_id}).one()
    finally:
        engine.dispose()


def _metric_counts(c: CoordinatorProc, job_id: str) -> dict[str, Counter[tuple[int, str]]]:
    engine = sa.create_engine(sqlite_url(c))
    out: dict[str, Counter[tuple[int, str]]] = {}
    try:
        with engine.connect() as conn:
            for table in ("metrics_train", "metrics_validation", "metrics_test"):
                rows = conn.execute(sa.text(f"SELECT epoch, key FROM {table} WHERE job_id = :j"), {"j": job_id})
                out[table] = Counter((int(r.epoch), r.key) for r in rows)
    finally:
        engine.dispose()
    return out


@pytest.mark.parametrize("fp,runtime", list(_params()))
def test_coordinator_killed_at_failpoint_then_restarted(fp: str, runtime: str, docker_env: dict[str, Any],
                                                        agent_factory: Callable[..., AgentProc],
                                                        coordinator_factory: Callable[..., CoordinatorProc]) -> None:
    c = coordinator_factory(env={"GPUFLEET_FAILPOINTS": f"{fp}=kill"}, node_timeout=15)
    kw: dict[str, Any] = {"runtime": runtime, "extra": ["--coordinator", c.addr]}
    if runtime == "docker":
        kw["docker_host"] = docker_env["docker_host"]
    a = agent_factory("a", **kw)
    if runtime == "docker":
        docker_env["names"].append(a.node_name)
    client = docker_env.get("client")
    register(c, a)

    if fp == "coordinator.metrics.mid_ingest":
        _mid_ingest(c, a)
    else:
        _gated_job(c, a, fp, runtime, client)
    settle(sqlite_url(c), {a.node_name: a.state_dir}, client)


def _gated_job(c: CoordinatorProc, a: AgentProc, fp: str, runtime: str, client: Any) -> None:
    job = c.stub.SubmitJob(cpb.SubmitJobRequest(spec=pb.JobSpec(output_dir=OUT, **gated(runtime)), gpus=1),
                           timeout=10)
    exit_code = 0
    if fp == "coordinator.assign.after_commit":
        wait_dead(c, "the coordinator")
        row = _db_job(c, job.job_id)
        assert (row.status, row.node, row.observed_state, row.attempt) == ("RUNNING", a.node_name, None, 1)
        assert not a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs  # Launch was never sent
        restart_clean(c)
        a.wait_state(job.job_id, "RUNNING", timeout=30)
    elif fp == "coordinator.launch.after_ack":
        wait_dead(c, "the coordinator")
        # Launched; the coordinator died before noting the agent's answer (its reconciler may
        # have seen the job PENDING meanwhile).
        a.wait_state(job.job_id, "RUNNING", timeout=30)
        restart_clean(c)
        # The restarted coordinator finds it running (no second Launch makes a second one).
        wait_for(lambda: get_job(c, job.job_id).status_name == "RUNNING"
                 and _db_job(c, job.job_id).observed_state == "RUNNING", 20, "observed RUNNING")
    else:  # coordinator.reconcile.before_apply: the end is seen, the coordinator dies storing it
        a.wait_state(job.job_id, "RUNNING", timeout=30)
        exit_code = 3
        release(a, OUT, exit_code)
        wait_dead(c, "the coordinator")
        assert get_job_db_status(c, job.job_id) == "RUNNING"
        restart_clean(c)
    if exit_code == 0:
        wait_for(lambda: runs(a, OUT) == 1, 20, "the job's first line")
        release(a, OUT, exit_code)
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED", timeout=30)
    want = "SUCCESS" if exit_code == 0 else "FAILED"
    assert (done.status_name, done.exit_code, done.attempt) == (want, exit_code, 1), done
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1  # one attempt
    assert runs(a, OUT) == 1
    assert agent_attempts(a) == {(job.job_id, 1)}
    if client is not None:
        assert len(containers(client, job_id=job.job_id, node=a.node_name)) <= 1


def get_job_db_status(c: CoordinatorProc, job_id: str) -> str:
    return str(_db_job(c, job_id).status)


def _mid_ingest(c: CoordinatorProc, a: AgentProc) -> None:
    m = c.stub.CreateModel(cpb.CreateModelRequest(
        model_no="G1", params_json=json.dumps({"total_epoch": 3, "epoch_seconds": 0.01}),
        spec=pb.JobSpec(command=TRAINER)), timeout=10)
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    job_id = m.current_attempt_id
    wait_dead(c, "the coordinator")
    # The whole ending transaction was lost: no metric row, the job still RUNNING.
    assert all(not n for n in _metric_counts(c, job_id).values())
    assert get_job_db_status(c, job_id) == "RUNNING"
    restart_clean(c)
    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "training outcome after restart")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "READY") and m.step1_metric_saved and m.best_epoch
    done = get_job(c, job_id)
    assert (done.status_name, done.exit_code, done.attempt) == ("SUCCESS", 0, 1)
    # Exactly the rows the outputs hold, each once (the agent probes the same folder again).
    probe = a.stub.ProbeOutputs(apb.ProbeOutputsRequest(output_dir=done.spec.output_dir, total_epoch=3),
                                timeout=10)
    want: dict[str, Counter[tuple[int, str]]] = {"metrics_train": Counter(), "metrics_validation": Counter(),
                                  "metrics_test": Counter()}
    table = {"train": "metrics_train", "val": "metrics_validation", "test": "metrics_test"}
    for row in probe.metrics:
        want[table[row.split]].update((row.epoch, k) for k in row.values)
    got = _metric_counts(c, job_id)
    assert got == want and sum(len(x) for x in got.values()) > 0, (got, want)
    assert all(n == 1 for x in got.values() for n in x.values())
    assert len(c.stub.GetJobMetrics(cpb.JobRef(job_id=job_id), timeout=5).rows) == sum(
        1 for _ in probe.metrics)
    assert agent_attempts(a) == {(job_id.split(".")[0], 1)}
    assert get_model(c, m.uuid).current_attempt_id == job_id
