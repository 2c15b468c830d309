"""Issue 13, finding 10: a huge request is refused before anything parses it, on both daemons.

gRPC refuses a request over gpufleet.server.MAX_REQUEST_BYTES from its length prefix
(RESOURCE_EXHAUSTED) before authentication runs; under the cap, an unauthenticated request is
refused without being parsed (gpufleet.auth._Lazy). The daemons' resident memory stays put.
"""
from __future__ import annotations

from collections.abc import Callable

import grpc

from gpufleet.server import MAX_REQUEST_BYTES
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc

HUGE = 30 * 1024 * 1024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call went through")


def test_a_30_mib_request_is_refused_before_authentication(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc]) -> None:
    c = coordinator_factory(extra=["--auth", "on"])
    a = agent_factory()
    assert c.daemon.proc is not None and a.daemon.proc is not None
    with grpc.insecure_channel(c.addr) as cch, grpc.insecure_channel(a.addr) as ach:
        coord, agent = coordinator_pb2_grpc.CoordinatorStub(cch), agent_pb2_grpc.AgentStub(ach)
        big_submit = cpb.SubmitJobRequest(spec=pb.JobSpec(command=["true"], output_dir="x", params_json="x" * HUGE))
        big_launch = apb.LaunchRequest(job_id="big", attempt=1,
                                       spec=pb.JobSpec(command=["true"], output_dir="x", params_json="x" * HUGE))
        # Warm both up (first calls load code), then measure.
        refused(lambda: coord.ListModels(cpb.ListModelsRequest(), timeout=10))
        agent.ListJobs(apb.ListJobsRequest(), timeout=10)
        before = {"coordinator": rss_mib(c.daemon.proc.pid), "agent": rss_mib(a.daemon.proc.pid)}
        for _ in range(5):
            code, msg = refused(lambda: coord.SubmitJob(big_submit, timeout=30))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
            code, msg = refused(lambda: agent.Launch(big_launch, timeout=30))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
        # Under the cap but without a token: refused as unauthenticated, the bytes never parsed.
        under = cpb.SubmitJobRequest(spec=pb.JobSpec(command=["true"], output_dir="x",
                                                     params_json="x" * (MAX_REQUEST_BYTES - 1024)))
        for _ in range(3):
            code, msg = refused(lambda: coord.SubmitJob(under, timeout=30))
            assert code == grpc.StatusCode.UNAUTHENTICATED and msg.startswith("missing bearer token")
        after = {"coordinator": rss_mib(c.daemon.proc.pid), "agent": rss_mib(a.daemon.proc.pid)}
        grew = {k: after[k] - before[k] for k in before}
        # 5 x 30 MiB parsed would be hundreds of MiB; refused unread, the daemons barely move.
        assert all(g < 128 for g in grew.values()), (before, after)
        assert agent.ListJobs(apb.ListJobsRequest(), timeout=10).jobs == []  # nothing launched
