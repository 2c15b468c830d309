"""The coordinator's reconciler rules on real processes: a coordinator (SQLite, or PostgreSQL at the
end) and real agents on the process runtime, everything over loopback gRPC.

Jobs that must outlive an event are "gated": they append a line to `runs` in their output folder
(so a second run would show), then wait for a `release` file there and exit with the code written
in it. Tests synchronise on what the daemons report (tests.harness.wait_for), never on sleeps; the
only timed windows are the ones that check that something does NOT happen.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from gpufleet.coordinator.db.rows import JobRow

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc, release, runs, wait_for

PY = sys.executable
TRAINER = [PY, "-m", "gpufleet.trainer"]
MISSING = "SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE"
GATE = (
    "import os, sys, time\n"
    "open('runs', 'a').write('run\\n')\n"
    "print('gate: waiting', flush=True)\n"
    "while not os.path.exists('release'):\n"
    "    time.sleep(0.02)\n"
    "print('gate: released', flush=True)\n"
    "sys.exit(int(open('release').read().strip() or 0))\n"
)
GATED = [PY, "-c", GATE]


# -- helpers (also used by the other coordinator test files) -----------------------------------------


def submit(c: CoordinatorProc, command: list[str], output_dir: str, gpus: int = 1, **kw: Any) -> cpb.Job:
    spec_kw = {k: kw.pop(k) for k in ("total_epoch", "params_json", "val_interval", "env") if k in kw}
    spec = pb.JobSpec(command=command, output_dir=output_dir, **spec_kw)
    return c.stub.SubmitJob(cpb.SubmitJobRequest(spec=spec, gpus=gpus, **kw), timeout=10)


def get_job(c: CoordinatorProc, job_id: str) -> cpb.Job:
    return c.stub.GetJob(cpb.JobRef(job_id=job_id), timeout=5)


def wait_job(c: CoordinatorProc, job_id: str, *statuses: str, timeout: float = 30) -> cpb.Job:
    def reached() -> cpb.Job | None:
        j = get_job(c, job_id)
        return j if j.status_name in statuses else None
    return wait_for(reached, timeout, f"job {job_id} in {statuses}")


def get_model(c: CoordinatorProc, uuid: str) -> cpb.Model:
    return c.stub.GetModel(cpb.ModelRef(uuid=uuid), timeout=5)


def wait_model(c: CoordinatorProc, uuid: str, pred: Callable[[cpb.Model], bool], what: str,
               timeout: float = 30) -> cpb.Model:
    def reached() -> cpb.Model | None:
        m = get_model(c, uuid)
        return m if pred(m) else None
    return wait_for(reached, timeout, what)


def states_of(m: cpb.Model) -> tuple[str, str, str]:
    return m.status_name, m.step1_state_name, m.step2_state_name


def agent_running(a: AgentProc, job_id: str, timeout: float = 30) -> pb.JobStatus:
    return a.wait_state(job_id, "RUNNING", timeout=timeout)


def kill_behind_agents_back(a: AgentProc, job_id: str, attempt: int = 1) -> None:
    """SIGKILL the job's wrapper first (so nobody records an exit code), then the job itself."""
    st = a.inspect(job_id)
    wrapper_pid = int(st.runtime_id)
    pid_file = a.state_dir / "jobs" / job_id / str(attempt) / "child.pid"
    child_pid = int(wait_for(lambda: pid_file.read_text() if pid_file.exists() else "", 10, "child.pid"))
    os.kill(wrapper_pid, signal.SIGKILL)
    os.killpg(child_pid, signal.SIGKILL)





def holds(fn: Callable[[], bool], seconds: float, what: str, interval: float = 0.1) -> None:
    """Assert that `fn()` stays true for `seconds` (for things that must NOT happen)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert fn(), f"{what} stopped holding"
        time.sleep(interval)


def agent_attempts(a: AgentProc) -> set[tuple[str, int]]:
    """Every (job, attempt) this agent ever recorded, from its durable event log."""
    evs = a.stub.WatchEvents(apb.WatchEventsRequest(after_seq=0, no_follow=True), timeout=30)
    return {(e.job.job_id, e.job.attempt) for e in evs}


def register(c: CoordinatorProc, a: AgentProc, n: int = 1) -> None:
    wait_for(lambda: len(c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) >= n, 30,
             f"{n} node(s) registered")
    wait_for(lambda: any(x.name == a.node_name and x.state_name == "READY"
                         for x in c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes), 30,
             f"{a.node_name} READY")


def node(c: CoordinatorProc, name: str) -> cpb.Node:
    return next(n for n in c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes if n.name == name)


def sqlite_engine(c: CoordinatorProc) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{c.root / 'state' / 'coordinator.db'}")


def metric_row_counts(engine: sa.Engine, job_id: str) -> dict[str, int]:
    out = {}
    with engine.connect() as conn:
        for table in ("metrics_train", "metrics_validation", "metrics_test"):
            out[table] = int(conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE job_id = :j"),
                                          {"j": job_id}).scalar_one())
    return out


def create_model(c: CoordinatorProc, params: dict[str, Any], model_no: str = "G1", **kw: Any) -> cpb.Model:
    return c.stub.CreateModel(cpb.CreateModelRequest(model_no=model_no, params_json=json.dumps(params),
                                                     spec=pb.JobSpec(command=TRAINER), **kw), timeout=10)


# -- plain jobs ---------------------------------------------------------------------------------------


def logs(c: CoordinatorProc, job_id: str, **kw: Any) -> bytes:
    req = apb.StreamLogsRequest(job_id=job_id, **kw)
    return b"".join(ch.data for ch in c.stub.StreamJobLogs(req, timeout=30))


def test_submit_runs_to_success_with_metrics(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    params = {"total_epoch": 3, "epoch_seconds": 0.01}
    job = submit(c, TRAINER, "plain-ok", params_json=json.dumps(params), total_epoch=3, name="plain")
    assert job.status_name == "QUEUED" and job.attempt == 1 and not job.HasField("exit_code")
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0 and done.error_message == "", done
    assert done.node == a.node_name and len(done.gpu_indices) == 1
    assert done.started_at.seconds and done.finished_at.seconds
    metrics = c.stub.GetJobMetrics(cpb.JobRef(job_id=job.job_id), timeout=5)
    assert metrics.job_id == job.job_id and metrics.best_epoch == 0  # plain jobs have no model
    assert {(r.split, r.epoch) for r in metrics.rows} == {(s, e) for s in ("train", "val") for e in (1, 2, 3)}
    assert all(set(r.values) == {"loss", "lr"} for r in metrics.rows if r.split == "train")
    listed = c.stub.ListJobs(cpb.ListJobsQuery(status=cpb.JOB_STATUS_CODE_SUCCESS), timeout=5)
    assert [j.job_id for j in listed.jobs] == [job.job_id] and listed.total_elements == 1


GATE2 = GATE.replace("sys.exit(", "while not os.path.exists('exit'):\n    time.sleep(0.02)\nsys.exit(")


def test_logs_of_a_running_job_plain_tail_and_follow(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, [PY, "-c", GATE2], "follow")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    wait_for(lambda: b"gate: waiting" in a.logs(job.job_id), 10, "the job's first line")
    assert logs(c, job.job_id) == b"gate: waiting\n"
    assert logs(c, job.job_id, tail_lines=1) == b"gate: waiting\n"
    stream = c.stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id, follow=True), timeout=30)
    got = next(stream).data
    assert got == b"gate: waiting\n"
    release(a, "follow")
    while b"released" not in got:  # streamed live, while the job still runs
        got += next(stream).data
    assert got == b"gate: waiting\ngate: released\n"
    assert a.inspect(job.job_id).state == pb.AGENT_JOB_STATE_RUNNING
    (a.output_root / "follow" / "exit").write_text("")
    assert [ch.data for ch in stream if ch.data] == []  # and the stream ends when the job ends
    wait_job(c, job.job_id, "SUCCESS")


def test_follow_logs_get_the_last_line_written_right_before_exit(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, GATED, "follow-end")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    wait_for(lambda: b"gate: waiting" in a.logs(job.job_id), 10, "the job's first line")
    stream = c.stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id, follow=True), timeout=30)
    got = next(stream).data
    release(a, "follow-end")  # the job prints its last line and exits at once
    for chunk in stream:
        got += chunk.data
    assert got == b"gate: waiting\ngate: released\n"


def test_logs_of_an_ended_job_are_still_served(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    job = submit(c, [PY, "-c", "import sys; print('line one'); print('going down'); sys.exit(7)"], "ended-logs")
    wait_job(c, job.job_id, "FAILED")
    assert logs(c, job.job_id) == b"line one\ngoing down\n"
    assert logs(c, job.job_id, tail_lines=1) == b"going down\n"


def test_nonzero_exit_is_failed_with_its_code(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    job = submit(c, [PY, "-c", "import sys; print('going down'); sys.exit(7)"], "plain-bad")
    done = wait_job(c, job.job_id, "FAILED", "SUCCESS", "STOPPED")
    assert done.status_name == "FAILED" and done.exit_code == 7
    assert done.error_message.startswith("EXIT_NONZERO: exit code 7"), done.error_message


def test_cancel_running_job_is_stopped(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, GATED, "cancel-me")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    c.stub.CancelJob(cpb.JobRef(job_id=job.job_id), timeout=30)
    done = wait_job(c, job.job_id, "STOPPED")
    assert done.exit_code == -1 and done.error_message.startswith("STOPPED_BY_USER"), done
    # stored, acknowledged, forgotten by the agent; the process is gone
    wait_for(lambda: not a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs, 15, "agent to drop the job")
    again = c.stub.CancelJob(cpb.JobRef(job_id=job.job_id), timeout=10)  # a repeat changes nothing
    assert again.status_name == "STOPPED" and again.exit_code == -1


def test_cancel_queued_job_without_any_agent(coordinator_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory()
    job = submit(c, [PY, "-c", "pass"], "never")
    assert get_job(c, job.job_id).status_name == "QUEUED"
    canceled = c.stub.CancelJob(cpb.JobRef(job_id=job.job_id), timeout=10)
    assert canceled.status_name == "CANCELED" and canceled.error_message.startswith("CANCELED_BY_USER")
    assert not canceled.node and get_job(c, job.job_id).status_name == "CANCELED"
    # no output yet: an empty log stream, not an error
    assert list(c.stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id), timeout=10)) == []


# -- vanished behind the agent's back ------------------------------------------------------------------


def test_killed_process_with_complete_outputs_is_success(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, GATED, "vanish-complete", total_epoch=3)
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    (a.output_root / "vanish-complete" / "val.csv").write_text("epoch,val_loss\n1,0.5\n2,0.4\n3,0.3\n")
    kill_behind_agents_back(a, job.job_id)
    done = wait_job(c, job.job_id, "SUCCESS", "STOPPED", "FAILED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0 and done.error_message == "", done
    rows = c.stub.GetJobMetrics(cpb.JobRef(job_id=job.job_id), timeout=5).rows
    assert sorted(r.epoch for r in rows if r.split == "val") == [1, 2, 3]


def test_killed_training_with_incomplete_outputs_is_stopped_then_resumes(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    m = create_model(c, {"total_epoch": 8, "epoch_seconds": 0.3}, gpus=1)
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    first = m.current_attempt_id
    j = wait_job(c, first, "RUNNING")
    agent_running(a, first)
    out = a.output_root / j.spec.output_dir
    wait_for(lambda: (out / "epoch_2.pth").exists(), 30, "two epochs written")
    kill_behind_agents_back(a, first)
    first_epoch_written = (out / "epoch_1.pth").stat().st_mtime_ns

    done = wait_job(c, first, "STOPPED", "SUCCESS", "FAILED")
    assert done.status_name == "STOPPED" and done.exit_code == -1, done
    assert done.error_message.startswith(f"{MISSING}: val.csv-lines-mismatch lines="), done.error_message
    assert done.error_message.endswith("expected=8")
    m = wait_model(c, m.uuid, lambda x: x.status_name == "STOPPED", "model STOPPED")
    assert states_of(m) == ("STOPPED", "STOPPED", "READY")
    assert m.last_error.startswith(MISSING) and m.current_attempt_id == first

    m = c.stub.ResumeTrain(cpb.ModelRef(uuid=m.uuid), timeout=30)
    assert states_of(m)[:2] == ("IN_PROGRESS", "IN_PROGRESS")
    second = m.current_attempt_id
    assert second == f"{first}.2"
    nxt = get_job(c, second)
    assert nxt.attempt == 2 and nxt.spec.output_dir == j.spec.output_dir
    params = json.loads(nxt.spec.params_json)
    assert re.fullmatch(r"epoch_\d+\.pth", params["resumeFrom"]), params
    assert params["resumeEpoch"] >= 2 and params["resumeFrom"] == f"epoch_{params['resumeEpoch']}.pth"
    assert get_job(c, first).superseded_by == second

    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "resumed training to end")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "READY"), m.last_error
    assert wait_job(c, second, "SUCCESS").exit_code == 0
    # resumed, not restarted: the checkpoints before the resume point were not written again
    assert (out / "epoch_1.pth").stat().st_mtime_ns == first_epoch_written
    val = (out / "val.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in val] == list(range(1, 9))


# -- coordinator restarts ------------------------------------------------------------------------------


def test_coordinator_killed_while_job_runs_job_keeps_running(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, GATED, "survive")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    c.kill()
    assert a.inspect(job.job_id).state == pb.AGENT_JOB_STATE_RUNNING
    c.start()
    # The restarted coordinator reconciled it (confirmed running, progress kept) and did not relaunch.
    assert get_job(c, job.job_id).status_name == "RUNNING"
    release(a, "survive")
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0, done
    assert runs(a, "survive") == 1
    assert agent_attempts(a) == {(job.job_id, 1)}


def test_job_failing_while_coordinator_is_down_is_failed_after_restart(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    job = submit(c, GATED, "fail-while-down")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    c.kill()
    release(a, "fail-while-down", 5)
    a.wait_state(job.job_id, "FAILED")
    c.start()
    done = wait_job(c, job.job_id, "FAILED", "SUCCESS", "STOPPED")
    assert done.status_name == "FAILED" and done.exit_code == 5, done
    # One reason per event, whichever daemon restarted first (issue 12).
    assert done.error_message.startswith("EXIT_NONZERO: exit code 5"), done.error_message


# -- drain ---------------------------------------------------------------------------------------------


def test_drain_blocks_new_placements_lets_running_finish_then_undrain(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    running = submit(c, GATED, "drain-running")
    wait_job(c, running.job_id, "RUNNING")
    agent_running(a, running.job_id)

    n = c.stub.DrainNode(cpb.NodeRef(name=a.node_name), timeout=10)
    assert n.state_name == "DRAINING" and n.running_jobs == 1
    queued = submit(c, [PY, "-c", "print('after undrain')"], "drain-queued")
    # several scheduling passes (0.5 s each) place nothing on a draining node, and it stays DRAINING
    holds(lambda: get_job(c, queued.job_id).status_name == "QUEUED"
          and node(c, a.node_name).state_name == "DRAINING", 2.0, "queued job stays queued while draining")
    assert get_job(c, running.job_id).status_name == "RUNNING"

    release(a, "drain-running")
    assert wait_job(c, running.job_id, "SUCCESS").exit_code == 0
    wait_for(lambda: node(c, a.node_name).state_name == "DRAINED", 15, "node DRAINED")
    holds(lambda: get_job(c, queued.job_id).status_name == "QUEUED", 1.0, "nothing placed on a drained node")
    assert c.stub.DrainNode(cpb.NodeRef(name=a.node_name), timeout=10).state_name == "DRAINED"  # repeat: no-op

    n = c.stub.UndrainNode(cpb.NodeRef(name=a.node_name), timeout=10)
    assert n.state_name == "READY"
    done = wait_job(c, queued.job_id, "SUCCESS")
    assert done.node == a.node_name


def test_unhealthy_gpus_are_never_assigned(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory()
    a = agent_factory("sick", gpus="fake:2", extra=["--coordinator", c.addr])
    register(c, a)
    a.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=0, healthy=False, reason="XID 79"), timeout=5)
    wait_for(lambda: [g.healthy for g in node(c, a.node_name).gpus] == [False, True], 15,
             "the heartbeat to carry GPU 0 unhealthy")
    one = submit(c, GATED, "sick-1", gpus=1)
    assert list(wait_job(c, one.job_id, "RUNNING").gpu_indices) == [1]
    two = submit(c, [PY, "-c", "pass"], "sick-2", gpus=1)
    holds(lambda: get_job(c, two.job_id).status_name == "QUEUED", 1.5, "no healthy GPU left: the job waits")
    a.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=0, healthy=True), timeout=5)  # recovered
    done = wait_job(c, two.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and list(done.gpu_indices) == [0]
    release(a, "sick-1")
    assert wait_job(c, one.job_id, "SUCCESS").exit_code == 0


# -- metric ingestion is idempotent --------------------------------------------------------------------


def test_metric_ingestion_is_idempotent(fleet) -> None:  # type: ignore[no-untyped-def]
    from gpufleet.coordinator.agents import probe_from_pb
    from gpufleet.coordinator.db import repo
    from gpufleet.coordinator.reconciler import ingest_probe

    c, a = fleet
    m = create_model(c, {"total_epoch": 4, "epoch_seconds": 0.01})
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    job_id = m.current_attempt_id
    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "training to end")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "READY") and m.step1_metric_saved
    engine = sqlite_engine(c)
    try:
        counts = metric_row_counts(engine, job_id)
        # 4 epochs x (loss, lr) in train.csv, 4 x (val_loss, accuracy) in val.csv: each stored once
        assert counts == {"metrics_train": 8, "metrics_validation": 8, "metrics_test": 0}
        rows = c.stub.GetJobMetrics(cpb.JobRef(job_id=job_id), timeout=5)
        assert len(rows.rows) == 8 and rows.best_epoch == m.best_epoch

        for _ in range(3):  # SyncStatus repeated, and a full reconcile at a coordinator restart
            assert states_of(c.stub.SyncStatus(cpb.ModelRef(uuid=m.uuid), timeout=10)) == states_of(m)
        c.restart()
        c.stub.SyncStatus(cpb.ModelRef(uuid=m.uuid), timeout=10)
        # the same report ingested again (what a repeated agent report would carry) inserts nothing
        spec = get_job(c, job_id).spec
        probe = probe_from_pb(a.stub.ProbeOutputs(apb.ProbeOutputsRequest(
            output_dir=spec.output_dir, params_json=spec.params_json), timeout=10))
        assert len(probe["metrics"]) == 8
        with engine.begin() as conn:
            row: JobRow = repo.get_job(conn, job_id)
            assert ingest_probe(conn, row, probe) == {"train": 0, "val": 0, "test": 0}
        assert metric_row_counts(engine, job_id) == counts
        assert len(c.stub.GetJobMetrics(cpb.JobRef(job_id=job_id), timeout=5).rows) == 8
        assert get_model(c, m.uuid).best_epoch == m.best_epoch
    finally:
        engine.dispose()


# -- the same flows on PostgreSQL ----------------------------------------------------------------------


@pytest.mark.postgres
def test_plain_job_and_model_training_on_postgres(coordinator_factory, agent_factory, pg_url) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(database_url=pg_url)
    a = agent_factory("pg-a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, [PY, "-c", "print('hello postgres')"], "pg-plain")
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0

    m = create_model(c, {"total_epoch": 3, "epoch_seconds": 0.01}, model_no="G4")
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "training to end on postgres")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "READY") and m.step1_metric_saved
    assert 1 <= m.best_epoch <= 3
    rows = c.stub.GetJobMetrics(cpb.JobRef(job_id=m.current_attempt_id), timeout=5).rows
    assert {(r.split, r.epoch) for r in rows} == {(s, e) for s in ("train", "val") for e in (1, 2, 3)}
    m = c.stub.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=m.best_epoch), timeout=10)
    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "test to end on postgres")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "COMPLETED") and m.step2_metric_saved
    # a restart on PostgreSQL keeps everything
    c.restart()
    assert states_of(get_model(c, m.uuid)) == ("COMPLETED", "COMPLETED", "COMPLETED")
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 3

