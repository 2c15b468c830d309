"""Issue 13: what a node cannot honour is refused at submit, never quietly run another way."""
from __future__ import annotations

from typing import Any

import grpc
import pytest
from gpufleet.coordinator.scheduler import NodeView, choose, runtime_for

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb


def test_image_on_a_process_only_fleet_is_refused_at_submit(fleet: Any) -> None:
    c, a = fleet
    with pytest.raises(grpc.RpcError) as err:
        c.stub.SubmitJob(cpb.SubmitJobRequest(spec=pb.JobSpec(image="busybox", command=["id"], output_dir="img"),
                                              gpus=1), timeout=10)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "docker" in (err.value.details() or "") and "spec.image" in (err.value.details() or "")
    # Nothing was queued, and nothing ran on the host.
    assert not (a.output_root / "img").exists()
    jobs = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=10)
    assert all(j.spec.image != "busybox" for j in jobs.jobs)


def test_image_jobs_are_placed_on_docker_nodes_only() -> None:
    proc = NodeView("p", "p:1", {}, {0, 1}, runtime="process")
    dock = NodeView("d", "d:1", {}, {0, 1, 2, 3}, runtime="docker")
    views = [proc, dock]
    pools = {rt: [v for v in views if v.runtime in (rt, "")] for rt in ("docker", "process")}
    assert runtime_for({"image": "busybox", "command": ["id"]}) == "docker"
    assert runtime_for({"command": ["id"]}) == "process"
    picked = choose(1, {}, pools[runtime_for({"image": "busybox"})])
    assert picked is not None and picked[0].name == "d"
    picked = choose(1, {}, pools[runtime_for({"command": ["id"]})])
    assert picked is not None and picked[0].name == "p"
