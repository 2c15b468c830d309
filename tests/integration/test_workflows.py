"""Work bigger than one job, on a real coordinator and agent (process runtime, fake:4): dependencies,
a pipeline with a failed middle step, cycles refused, shadow steps, arrays with a cap, time limits,
and train-then-test by itself."""
from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import release, wait_for
from tests.integration.test_coordinator_reconcile import GATED, create_model, get_job, wait_job, wait_model

PY = sys.executable
_SEQ = itertools.count()


def pipeline_when(c, pipeline_id: str, done: Callable[[cpb.Pipeline], bool], what: str) -> cpb.Pipeline:  # type: ignore[no-untyped-def]
    def reached() -> cpb.Pipeline | None:
        x = c.stub.GetPipeline(cpb.PipelineRef(pipeline_id=pipeline_id), timeout=5)
        return x if done(x) else None
    return wait_for(reached, 90, what)


def array_when(c, array_id: str, done: Callable[[cpb.JobArray], bool], what: str) -> cpb.JobArray:  # type: ignore[no-untyped-def]
    def reached() -> cpb.JobArray | None:
        x = c.stub.GetArray(cpb.ArrayRef(array_id=array_id), timeout=5)
        return x if done(x) else None
    return wait_for(reached, 60, what)


ENDED = ("SUCCESS", "FAILED", "CANCELED", "STOPPED")


def req(command: list[str], output_dir: str = "", gpus: int = 1, **kw: object) -> cpb.SubmitJobRequest:
    output_dir = output_dir or f"wf-{next(_SEQ)}"
    return cpb.SubmitJobRequest(spec=pb.JobSpec(command=command, output_dir=output_dir), gpus=gpus, **kw)  # type: ignore[arg-type]


def ok(text: str) -> list[str]:
    return [PY, "-c", f"print({text!r})"]


def fail(code: int) -> list[str]:
    return [PY, "-c", f"import sys; sys.exit({code})"]


def test_afterok_waits_for_success_and_a_failed_dependency_cancels_its_dependant(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    gate = c.stub.SubmitJob(req(GATED, "gate"), timeout=10)
    wait_job(c, gate.job_id, "RUNNING")
    after = c.stub.SubmitJob(req(ok("after"), depends_on=[gate.job_id]), timeout=10)
    anyway = c.stub.SubmitJob(req(ok("anyway"), depends_on=[gate.job_id], dependency_mode="afterany"), timeout=10)
    j = get_job(c, after.job_id)
    assert (j.status_name, j.pending_code) == ("QUEUED", "DEPENDENCY")
    assert j.pending_reason == f"waiting for {gate.job_id} (RUNNING)" and list(j.depends_on) == [gate.job_id]

    release(a, "gate", 3)  # the dependency fails
    wait_job(c, gate.job_id, "FAILED", timeout=60)
    skipped = wait_job(c, after.job_id, "CANCELED", timeout=60)
    assert skipped.error_message == f"DEPENDENCY: dependency {gate.job_id} ended FAILED"
    assert wait_job(c, anyway.job_id, "SUCCESS", "FAILED", timeout=60).status_name == "SUCCESS"


def test_bad_dependencies_are_refused_and_change_nothing(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    before = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitJob(req(ok("x"), depends_on=["nosuchjob"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "depends_on: job nosuchjob not found" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitJob(req(ok("x"), dependency_mode="before"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dependency_mode" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitJob(req(ok("x"), time_limit_seconds=-1), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "time_limit_seconds" in err.value.details()
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == before


def step(name: str, command: list[str], after: list[str] = (), shadow: bool = False) -> cpb.PipelineStep:  # type: ignore[assignment]
    return cpb.PipelineStep(name=name, job=req(command, f"pl/{name}"), after=list(after), shadow=shadow)


def test_a_three_step_pipeline_with_a_failed_middle_step_skips_the_last(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    p = c.stub.SubmitPipeline(cpb.SubmitPipelineRequest(name="train-eval", steps=[
        step("report", ok("report"), ["evaluate"]), step("prepare", ok("prepare")),
        step("evaluate", fail(4), ["prepare"]),
    ]), timeout=10)
    assert [s.name for s in p.steps] == ["prepare", "evaluate", "report"]  # topological order
    done = pipeline_when(c, p.pipeline_id, lambda x: x.state not in ("QUEUED", "RUNNING"), "the pipeline to end")
    by = {s.name: s for s in done.steps}
    assert done.state == "FAILED"
    assert by["prepare"].status_name == "SUCCESS" and by["evaluate"].status_name == "FAILED"
    assert get_job(c, by["evaluate"].job_id).exit_code == 4  # its own failure, not a refused launch
    assert by["report"].status_name == "CANCELED"
    assert by["report"].reason == f"DEPENDENCY: dependency {by['evaluate'].job_id} ended FAILED"
    assert list(by["report"].after) == ["evaluate"]
    # The downstream step was told where its input lives.
    env = get_job(c, by["evaluate"].job_id).spec.env
    assert env["FLEET_INPUT_PREPARE"] == "pl/prepare"


def test_pipeline_refusals_name_the_cycle_and_the_shadow_step(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    before = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitPipeline(cpb.SubmitPipelineRequest(name="loop", steps=[
            step("a", ok("a"), ["c"]), step("b", ok("b"), ["a"]), step("c", ok("c"), ["b"])]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the steps form a cycle: a -> c -> b -> a" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitPipeline(cpb.SubmitPipelineRequest(name="sh", steps=[
            step("a", ok("a")), step("challenger", ok("c"), ["a"], shadow=True),
            step("b", ok("b"), ["challenger"])]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[2].after: step 'b' comes after shadow step 'challenger'" in err.value.details()
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == before


def test_a_failed_shadow_step_does_not_fail_the_pipeline(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    p = c.stub.SubmitPipeline(cpb.SubmitPipelineRequest(name="shadowed", steps=[
        step("train", ok("train")), step("challenger", fail(2), ["train"], shadow=True),
        step("test", ok("test"), ["train"])]), timeout=10)
    done = pipeline_when(c, p.pipeline_id, lambda x: all(s.status_name in ENDED for s in x.steps),
                         "every step to end")
    by = {s.name: s for s in done.steps}
    assert by["challenger"].status_name == "FAILED" and by["challenger"].shadow
    assert done.state == "SUCCESS"


def test_a_sweep_of_five_runs_at_most_two_at_once(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    arr = c.stub.SubmitArray(cpb.SubmitArrayRequest(job=req(GATED, "sweep", name="lr-sweep"), max_running=2,
                                                    params=[f'{{"lr": {x}}}' for x in (0.1, 0.01, 0.001, 1e-4, 1e-5)]),
                             timeout=10)
    assert [j.name for j in arr.jobs] == [f"lr-sweep[{i}]" for i in range(5)]
    assert [j.spec.output_dir for j in arr.jobs] == [f"sweep/{i}" for i in range(5)]
    assert '"lr": 0.001' in arr.jobs[2].spec.params_json and arr.jobs[2].spec.env["FLEET_ARRAY_INDEX"] == "2"

    def statuses() -> list[str]:
        return [j.status_name for j in c.stub.GetArray(cpb.ArrayRef(array_id=arr.array_id), timeout=5).jobs]

    finished: set[int] = set()
    while len(finished) < 5:
        want = min(2, 5 - len(finished))
        now = [j.status_name for j in array_when(c, arr.array_id, lambda x, want=want: [
            j.status_name for j in x.jobs].count("RUNNING") == want, "two jobs of the sweep running").jobs]
        assert now.count("RUNNING") <= 2
        queued = [j for j in c.stub.GetArray(cpb.ArrayRef(array_id=arr.array_id), timeout=5).jobs
                  if j.status_name == "QUEUED"]
        assert all(j.pending_code == "ARRAY_LIMIT" for j in queued)  # 4 GPUs free, held by the cap
        i = next(k for k, s in enumerate(now) if s == "RUNNING")
        release(a, f"sweep/{i}", 0)
        wait_for(lambda i=i: statuses()[i] == "SUCCESS", 60, f"sweep job {i} to end")
        finished.add(i)
    assert statuses() == ["SUCCESS"] * 5


def test_cancel_array_cancels_what_has_not_finished(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    arr = c.stub.SubmitArray(cpb.SubmitArrayRequest(job=req(GATED, "cx"), count=3, max_running=1), timeout=10)
    array_when(c, arr.array_id, lambda x: any(j.status_name == "RUNNING" for j in x.jobs), "one running")
    c.stub.CancelArray(cpb.ArrayRef(array_id=arr.array_id), timeout=30)
    got = array_when(c, arr.array_id, lambda x: all(j.status_name in ENDED for j in x.jobs), "all ended")
    assert sorted(j.status_name for j in got.jobs) == ["CANCELED", "CANCELED", "STOPPED"]


def test_a_job_past_its_time_limit_is_stopped_with_reason_time_limit(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    j = c.stub.SubmitJob(req(GATED, "limited", time_limit_seconds=2), timeout=10)
    assert j.time_limit_seconds == 2
    done = wait_job(c, j.job_id, "STOPPED", "FAILED", "SUCCESS", timeout=60)
    assert (done.status_name, done.exit_code) == ("STOPPED", -1)
    assert done.error_message == "TIME_LIMIT: ran longer than its time limit of 2 s"


def test_a_model_with_auto_test_runs_step_2_at_the_best_epoch_by_itself(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    m = create_model(c, {"total_epoch": 3, "epoch_seconds": 0.01}, model_no="G1", auto_test="best")
    assert m.auto_test == "best"
    c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    done = wait_model(c, m.uuid, lambda x: x.step2_state_name in ("COMPLETED", "ERROR", "STOPPED"),
                      "step 2 to end by itself", timeout=90)
    assert (done.status_name, done.step1_state_name, done.step2_state_name) == ("COMPLETED", "COMPLETED", "COMPLETED")
    assert done.test_epoch == done.best_epoch >= 1
    with pytest.raises(grpc.RpcError) as err:
        create_model(c, {"total_epoch": 3}, model_no="G2", auto_test="worst")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "auto_test" in err.value.details()
