"""Silence is not death (issue 12), on real processes: a coordinator (SQLite) and a real agent on the
process runtime. The agent is SIGKILLed (its jobs keep running on the host, their wrappers record
their exit) and started again later, as a slow restart or a network blip would look.

- past --node-timeout the node is UNREACHABLE, its jobs stay RUNNING with "node unreachable since";
- a job that ends during the silence keeps its true outcome, metrics and log when the node returns;
- once a job's lost_after passes it is requeued once, as a new fenced attempt, resuming from the
  latest epoch the coordinator saw, in a fresh folder; the returning node's old attempt is stopped;
- an original that completed during the silence beats its replacement (canceled or stopped,
  SUPERSEDED_BY_ORIGINAL).

Tests synchronise on what the daemons report (wait_for), never on sleeps; the windows that check
that something does NOT happen are `holds`.
"""
from __future__ import annotations

import json

from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import pid_alive, release, runs, wait_for
from tests.integration.test_coordinator_reconcile import (
    GATED,
    agent_running,
    create_model,
    get_job,
    holds,
    logs,
    node,
    register,
    states_of,
    submit,
    wait_job,
    wait_model,
)

NODE_TIMEOUT = 2.0


def test_agent_down_past_node_timeout_stops_nothing_and_the_training_ends_true(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    m = create_model(c, {"total_epoch": 6, "epoch_seconds": 0.4}, gpus=1)
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    job_id = m.current_attempt_id
    j = wait_job(c, job_id, "RUNNING")
    wrapper = int(agent_running(a, job_id).runtime_id)
    out = a.output_root / j.spec.output_dir
    wait_for(lambda: (out / "epoch_1.pth").exists(), 30, "the first epoch written")
    a.kill()  # the agent only: the trainer keeps running

    wait_for(lambda: node(c, a.node_name).state_name == "UNREACHABLE", 30, "node UNREACHABLE")
    seen = get_job(c, job_id)
    assert seen.status_name == "RUNNING" and seen.HasField("node_unreachable_since"), seen
    # The training finishes during the silence; nothing is stopped or requeued meanwhile.
    wait_for(lambda: not pid_alive(wrapper), 60, "the training to finish while its agent is down")
    holds(lambda: get_job(c, job_id).status_name == "RUNNING" and not get_job(c, job_id).superseded_by,
          NODE_TIMEOUT, "job RUNNING (not stopped, not requeued) while its node is silent")

    a.start()
    done = wait_job(c, job_id, "SUCCESS", "FAILED", "STOPPED")
    assert done.status_name == "SUCCESS" and done.exit_code == 0 and done.attempt == 1, done
    assert not done.HasField("node_unreachable_since")
    m = wait_model(c, m.uuid, lambda x: x.status_name != "IN_PROGRESS", "model settled")
    assert states_of(m) == ("COMPLETED", "COMPLETED", "READY"), m.last_error
    metrics = c.stub.GetJobMetrics(cpb.JobRef(job_id=job_id), timeout=5)
    val_epochs = sorted({r.epoch for r in metrics.rows if r.split == "val"})
    assert val_epochs == list(range(1, 7)), val_epochs
    assert b"Epoch 6/6" in logs(c, job_id)
    assert node(c, a.node_name).state_name == "READY"
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 1


def test_job_failing_during_the_silence_keeps_its_exit_code_and_log(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "fails-silently", max_retries=1)
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    a.kill()
    wait_for(lambda: node(c, a.node_name).state_name == "UNREACHABLE", 30, "node UNREACHABLE")
    release(a, "fails-silently", 3)
    wait_for(lambda: not pid_alive(wrapper), 30, "the job to exit while its agent is down")
    a.start()
    done = wait_job(c, job.job_id, "FAILED", "SUCCESS", "STOPPED")
    assert done.status_name == "FAILED" and done.exit_code == 3, done
    assert done.error_message.startswith("EXIT_NONZERO: exit code 3"), done.error_message
    assert b"gate: released" in logs(c, job.job_id)
    assert not done.superseded_by and runs(a, "fails-silently") == 1


def test_lost_after_passed_requeues_once_from_the_latest_epoch_in_a_fresh_folder(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    m = create_model(c, {"total_epoch": 40, "epoch_seconds": 0.3}, gpus=1, max_retries=1, lost_after_seconds=3)
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    first = m.current_attempt_id
    j = wait_job(c, first, "RUNNING")
    assert j.lost_after_seconds == 3
    wrapper = int(agent_running(a, first).runtime_id)
    # The coordinator has seen at least two epochs (its stored progress).
    wait_for(lambda: get_job(c, first).progress.current_epoch >= 2, 60, "two epochs reported")
    a.kill()

    lost = wait_job(c, first, "STOPPED", "SUCCESS", "FAILED", timeout=60)
    assert lost.exit_code == -1 and lost.error_message.startswith("NODE_LOST"), lost
    second_id = f"{first}.2"
    assert lost.superseded_by == second_id
    assert pid_alive(wrapper), "giving up on the attempt must not touch the host"
    second = get_job(c, second_id)
    assert second.attempt == 2 and second.spec.output_dir == f"{j.spec.output_dir}-attempt2", second
    params = json.loads(second.spec.params_json)
    seen_epoch = params["resumeEpoch"]
    old_folder = j.spec.output_dir.rsplit("/", 1)[-1]
    assert seen_epoch >= 2 and params["resumeFrom"] == f"../{old_folder}/epoch_{seen_epoch}.pth", params
    assert get_model(c, m.uuid).current_attempt_id == second_id

    a.start()  # the node returns: its attempt 1 is no longer current and is stopped (fencing)
    wait_for(lambda: not pid_alive(wrapper), 30, "the replaced attempt to be stopped on the returning node")
    done = wait_job(c, second_id, "SUCCESS", "FAILED", "STOPPED", timeout=90)
    assert done.status_name == "SUCCESS", done
    fresh = a.output_root / second.spec.output_dir
    val = (fresh / "val.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in val] == list(range(seen_epoch + 1, 41))
    assert get_job(c, first).status_name == "STOPPED"  # the lost verdict stands: it did not finish
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == 2


def test_original_that_completed_during_the_silence_beats_its_replacement(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=3)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "orig", max_retries=1)
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    a.kill()
    lost = wait_job(c, job.job_id, "STOPPED", "SUCCESS", "FAILED", timeout=60)
    assert lost.error_message.startswith("NODE_LOST"), lost
    replacement = lost.superseded_by
    assert replacement and get_job(c, replacement).status_name == "QUEUED"
    release(a, "orig", 0)
    wait_for(lambda: not pid_alive(wrapper), 30, "the original to complete while its agent is down")

    a.start()
    done = wait_job(c, job.job_id, "SUCCESS", timeout=60)
    assert done.exit_code == 0 and done.superseded_by == replacement, done
    assert b"gate: released" in logs(c, job.job_id)
    rep = wait_job(c, replacement, "CANCELED", "STOPPED", timeout=60)
    assert rep.error_message.startswith("SUPERSEDED_BY_ORIGINAL"), rep.error_message
    assert runs(a, "orig") == 1


def get_model(c, uuid):  # type: ignore[no-untyped-def]
    return c.stub.GetModel(cpb.ModelRef(uuid=uuid), timeout=5)


def test_a_flood_of_follow_streams_does_not_silence_a_node(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """40 StreamJobLogs(follow) from one caller: the coordinator refuses the ones past its per-caller
    bound (RESOURCE_EXHAUSTED) and keeps threads for agents, so heartbeats go on: the node never
    shows UNREACHABLE, and a user call still answers."""
    import threading

    import grpc

    from gpufleet.v1 import agent_pb2 as apb

    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "flood")
    wait_job(c, job.job_id, "RUNNING")
    agent_running(a, job.job_id)
    codes: list[grpc.StatusCode] = []
    streams: list[object] = []
    lock = threading.Lock()

    def follow() -> None:
        call = c.stub.StreamJobLogs(apb.StreamLogsRequest(job_id=job.job_id, follow=True), timeout=120)
        with lock:
            streams.append(call)
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            with lock:
                codes.append(exc.code())

    threads = [threading.Thread(target=follow, daemon=True) for _ in range(40)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(1 for x in codes if x == grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, 60,
                 "follow streams past the per-caller bound refused")
        holds(lambda: node(c, a.node_name).state_name == "READY", 3 * NODE_TIMEOUT,
              "node READY while a viewer floods the coordinator with follow streams")
        assert get_job(c, job.job_id).status_name == "RUNNING"
    finally:
        for s in list(streams):
            s.cancel()  # type: ignore[attr-defined]
        for t in threads:
            t.join(timeout=30)
    release(a, "flood")
    assert wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED").status_name == "SUCCESS"


BIG_CSV = (
    "name = 'm' * 65\n"
    "with open('train.csv', 'w') as f:\n"
    "    f.write('epoch,loss,' + name + '\\n')\n"
    "    f.writelines(f'{e},{1.0 / e:.6f},1.0\\n' for e in range(1, 100_001))\n"
    "with open('val.csv', 'w') as f:\n"
    "    f.write('epoch,val_loss,' + name + '\\n')\n"
    "    f.writelines(f'{e},{2.0 / e:.6f},2.0\\n' for e in range(1, 4))\n"
    "print('Epoch 3/3 loss=0.1', flush=True)\n"
)


def test_long_metric_name_and_100k_row_csv_end_normally_with_a_warning(
        coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """A 65-character column is dropped with a warning on the job, every other value is stored; a
    100,000-row train.csv travels in pages (no message near gRPC's 4 MiB limit) and the job ends."""
    from tests.integration.test_coordinator_reconcile import PY, metric_row_counts, sqlite_engine

    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, [PY, "-c", BIG_CSV], "big-csv", total_epoch=3)
    done = wait_job(c, job.job_id, "SUCCESS", "FAILED", "STOPPED", timeout=180)
    assert done.status_name == "SUCCESS" and done.exit_code == 0, done
    assert "m" * 65 in done.warnings and "dropped" in done.warnings, done.warnings
    engine = sqlite_engine(c)
    try:
        counts = metric_row_counts(engine, job.job_id)
    finally:
        engine.dispose()
    assert counts == {"metrics_train": 100_000, "metrics_validation": 3, "metrics_test": 0}, counts
    assert get_job(c, job.job_id).progress.current_epoch == 3


def test_the_same_reason_whichever_daemon_restarts_first(coordinator_factory, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """A job exits 5 while both daemons are down; the coordinator starts first, then the agent (the
    other order is test_job_failing_while_coordinator_is_down_is_failed_after_restart): the
    reason is EXIT_NONZERO either way, never a restart-flavoured code."""
    c = coordinator_factory(node_timeout=NODE_TIMEOUT, lost_after=300)
    a = agent_factory("a", extra=["--coordinator", c.addr])
    register(c, a)
    job = submit(c, GATED, "order")
    wait_job(c, job.job_id, "RUNNING")
    wrapper = int(agent_running(a, job.job_id).runtime_id)
    a.kill()
    c.kill()
    release(a, "order", 5)
    wait_for(lambda: not pid_alive(wrapper), 30, "the job to exit while both daemons are down")
    c.start()
    assert get_job(c, job.job_id).status_name == "RUNNING"  # nobody can tell yet
    a.start()
    done = wait_job(c, job.job_id, "FAILED", "SUCCESS", "STOPPED", timeout=60)
    assert done.status_name == "FAILED" and done.exit_code == 5, done
    assert done.error_message.startswith("EXIT_NONZERO: exit code 5"), done.error_message
