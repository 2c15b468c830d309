"""End to end on real processes: create model -> train -> metrics -> test at best epoch -> COMPLETED."""
from __future__ import annotations

import json
import sys

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import wait_for

TRAINER = [sys.executable, "-m", "gpufleet.trainer"]


def status(m: cpb.Model) -> tuple[str, str, str]:
    return m.status_name, m.step1_state_name, m.step2_state_name


def test_train_then_test_at_best_epoch(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    m = c.stub.CreateModel(cpb.CreateModelRequest(
        model_no="G1", version="v1", train_type="seg",
        params_json=json.dumps({"total_epoch": 4, "epoch_seconds": 0.05}),
        spec=pb.JobSpec(command=TRAINER, total_epoch=4), gpus=1), timeout=10)
    assert status(m) == ("READY", "READY", "READY")
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    assert status(m)[:2] == ("IN_PROGRESS", "IN_PROGRESS") and m.current_attempt_id
    train_job = m.current_attempt_id
    m = wait_for(lambda: (x := c.stub.GetModel(cpb.ModelRef(uuid=m.uuid), timeout=5)).step1_state_name == "COMPLETED"
                 and x, 60, "training to complete")
    assert status(m) == ("COMPLETED", "COMPLETED", "READY")
    assert m.step1_metric_saved and 1 <= m.best_epoch <= 4 and m.step1_seconds > 0
    job = c.stub.GetJob(cpb.JobRef(job_id=train_job), timeout=5)
    assert job.status_name == "SUCCESS" and job.exit_code == 0 and job.node == a.node_name
    metrics = c.stub.GetJobMetrics(cpb.JobRef(job_id=train_job), timeout=5)
    epochs = {(r.split, r.epoch) for r in metrics.rows}
    assert {("train", e) for e in range(1, 5)} <= epochs and {("val", e) for e in range(1, 5)} <= epochs
    val = {r.epoch: r.values["val_loss"] for r in metrics.rows if r.split == "val"}
    assert m.best_epoch == min(val, key=val.get)  # type: ignore[arg-type]

    m = c.stub.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=m.best_epoch), timeout=10)
    assert status(m) == ("IN_PROGRESS", "COMPLETED", "IN_PROGRESS")
    m = wait_for(lambda: (x := c.stub.GetModel(cpb.ModelRef(uuid=m.uuid), timeout=5)).step2_state_name == "COMPLETED"
                 and x, 60, "test to complete")
    assert status(m) == ("COMPLETED", "COMPLETED", "COMPLETED") and m.step2_metric_saved
    test_rows = c.stub.GetJobMetrics(cpb.JobRef(job_id=m.current_attempt_id), timeout=5).rows
    assert [r.split for r in test_rows] == ["test"] and test_rows[0].epoch == m.best_epoch
    listed = c.stub.ListModels(cpb.ListModelsRequest(status=cpb.MODEL_STATUS_COMPLETED), timeout=5)
    assert listed.total_elements == 1 and listed.items[0].uuid == m.uuid


def test_failed_training_is_error_then_restart_succeeds(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    params = {"total_epoch": 3, "epoch_seconds": 0.02, "fail_at_epoch": 2}
    m = c.stub.CreateModel(cpb.CreateModelRequest(model_no="G2", params_json=json.dumps(params),
                                                  spec=pb.JobSpec(command=TRAINER)), timeout=10)
    c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    m = wait_for(lambda: (x := c.stub.GetModel(cpb.ModelRef(uuid=m.uuid), timeout=5)).status_name == "ERROR" and x,
                 60, "model ERROR")
    assert m.step1_state_name == "ERROR" and "EXIT_NONZERO" in m.last_error
    job = c.stub.GetJob(cpb.JobRef(job_id=m.current_attempt_id), timeout=5)
    assert job.status_name == "FAILED" and job.exit_code == 3
    m = c.stub.RestartTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    assert m.current_attempt_id != job.job_id and m.status_name == "IN_PROGRESS"


def test_cancel_train_stops_the_job(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    params = {"total_epoch": 100, "epoch_seconds": 0.5}
    m = c.stub.CreateModel(cpb.CreateModelRequest(model_no="G3", params_json=json.dumps(params),
                                                  spec=pb.JobSpec(command=TRAINER)), timeout=10)
    m = c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    wait_for(lambda: c.stub.GetJob(cpb.JobRef(job_id=m.current_attempt_id), timeout=5).node, 30, "placement")
    wait_for(lambda: a.inspect(m.current_attempt_id).state == pb.AGENT_JOB_STATE_RUNNING, 30, "running on agent")
    m = c.stub.CancelTrain(cpb.ModelRef(uuid=m.uuid), timeout=30)
    assert status(m)[:2] == ("STOPPED", "STOPPED")
    job = wait_for(lambda: (j := c.stub.GetJob(cpb.JobRef(job_id=m.current_attempt_id), timeout=5)).status_name
                   == "STOPPED" and j, 30, "job STOPPED")
    assert job.exit_code == -1
    # The coordinator stored the final state and acknowledged it: the agent forgot the job and
    # runs nothing.
    from gpufleet.v1 import agent_pb2 as apb

    wait_for(lambda: not a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs, 10, "agent to drop the job")
