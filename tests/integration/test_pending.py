"""What a scheduler's users see while a job waits, on a real coordinator and agent (process runtime,
fake:4): an impossible job refused at submit, every queued job with its reason, and a placeable job
starting at once behind a queue of jobs that cannot be placed."""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc, release, wait_for
from tests.integration.test_coordinator_reconcile import GATED, get_job, submit, wait_job

PY = sys.executable


def test_a_job_no_node_could_run_is_refused_naming_the_largest_node(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    node = c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes[0].name
    before = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements
    with pytest.raises(grpc.RpcError) as err:
        submit(c, [PY, "-c", "pass"], "big", gpus=64)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"needs 64 GPUs, largest node has 4 ({node})" in err.value.details()
    assert "wait_for_capacity" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        submit(c, [PY, "-c", "pass"], "rack", constraints={"rack": "x"})
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "rack=x matches no node" in err.value.details()
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == before  # nothing queued

    waiting = submit(c, [PY, "-c", "pass"], "wait", gpus=64, wait_for_capacity=True)
    assert waiting.status_name == "QUEUED" and waiting.pending_code == "NO_NODE_FITS"
    assert get_job(c, waiting.job_id).pending_reason == f"needs 64 GPUs, largest node has 4 ({node})"


def test_every_queued_job_says_why_it_waits(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    holder = submit(c, GATED, "hold", gpus=4)
    wait_job(c, holder.job_id, "RUNNING")
    behind = submit(c, [PY, "-c", "pass"], "behind", gpus=2)
    j = get_job(c, behind.job_id)
    assert (j.status_name, j.pending_code) == ("QUEUED", "GPUS_BUSY")
    assert j.pending_reason == "needs 2 free GPUs, at most 0 free on a node that fits"
    listed = {x.job_id: x for x in c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).jobs}
    assert listed[behind.job_id].pending_code == "GPUS_BUSY"
    assert listed[holder.job_id].pending_code == ""  # running jobs wait for nothing

    release(a, "hold", 0)
    done = wait_job(c, behind.job_id, "SUCCESS", "FAILED", timeout=60)
    assert done.status_name == "SUCCESS" and done.pending_code == ""


def test_a_placeable_job_runs_at_once_behind_200_that_cannot_be_placed(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc]) -> None:
    c = coordinator_factory()
    agent_factory("two", gpus="fake:2", extra=["--coordinator", c.addr])
    wait_for(lambda: len(c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes) == 1, 30, "agent registered")
    for i in range(200):
        submit(c, [PY, "-c", "pass"], f"big{i}", gpus=3, priority=2**31 - 1,
               wait_for_capacity=True)
    small = submit(c, [PY, "-c", "pass"], "small", gpus=1)
    done = wait_job(c, small.job_id, "SUCCESS", "FAILED", timeout=60)
    assert done.status_name == "SUCCESS" and done.exit_code == 0
    page = c.stub.ListJobs(cpb.ListJobsQuery(status=cpb.JOB_STATUS_CODE_QUEUED, size=500), timeout=10)
    assert page.total_elements == 200
    assert {j.pending_code for j in page.jobs} == {"NO_NODE_FITS"}


def test_following_the_log_of_a_queued_job_waits_for_it_to_start(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    holder = submit(c, GATED, "hold", gpus=4)
    wait_job(c, holder.job_id, "RUNNING")
    queued = submit(c, [PY, "-c", "print('hello from the queue', flush=True)"], "queued", gpus=1)
    got: list[bytes] = []
    ended = threading.Event()

    def follow() -> None:
        for chunk in c.stub.StreamJobLogs(apb.StreamLogsRequest(job_id=queued.job_id, follow=True), timeout=120):
            got.append(chunk.data)
        ended.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    # While the job waits, the follow stays open (before, it returned at once with nothing).
    assert not ended.wait(1.0)
    assert get_job(c, queued.job_id).status_name == "QUEUED"
    release(a, "hold", 0)
    assert ended.wait(90), "the follow ends once the job has run"
    assert b"hello from the queue" in b"".join(got)
