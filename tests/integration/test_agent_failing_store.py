"""The agent on a store that cannot be written (agent/memstore.py FailingStore), served over real gRPC
with the process runtime and fake GPUs: a Launch is refused with a clear RESOURCE_EXHAUSTED and
starts nothing; a job that ends while the store fails stays RUNNING (never guessed LOST) and its end
is recorded once writes work again; the agent keeps answering throughout."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gpufleet.agent.gpus import FakeGpus, GpuMonitor
from gpufleet.agent.memstore import FailingStore
from gpufleet.agent.runtime.process import ProcessRuntime
from gpufleet.agent.service import AgentService, add_to_server
from gpufleet.agent.spec import Roots
from gpufleet.agent.supervisor import Supervisor

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from tests.harness import wait_for

PY = sys.executable
# Runs until the file named by argv[1] exists, then exits 3.
WAITER = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\nsys.exit(3)"


@dataclass
class Agent:
    store: FailingStore
    sup: Supervisor
    stub: agent_pb2_grpc.AgentStub
    roots: Roots


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    roots = Roots(tmp_path / "out", tmp_path / "data", tmp_path / "state" / "jobs")
    for p in (roots.output_root, roots.data_root, roots.jobs_root):
        p.mkdir(parents=True, exist_ok=True)
    store = FailingStore()
    store.failing = False
    monitor = GpuMonitor(FakeGpus(2, seed=1), interval=0.2)
    monitor.start()
    sup = Supervisor(store, ProcessRuntime(roots.jobs_root), monitor, roots,
                     base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, poll_interval=0.1)
    sup.restore()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    add_to_server(AgentService(sup, monitor, "node-test"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sup.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Agent(store, sup, agent_pb2_grpc.AgentStub(channel), roots)
    finally:
        channel.close()
        server.stop(None).wait()
        sup.close()
        monitor.stop()
        for pidfile in roots.jobs_root.glob("*/*/child.pid"):
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def launch(a: Agent, job_id: str, argv: list[str]) -> pb.JobStatus:
    return a.stub.Launch(apb.LaunchRequest(job_id=job_id, attempt=1, gpu_indices=[0],
                                           spec=pb.JobSpec(command=argv, output_dir=job_id)), timeout=30)


def test_a_launch_on_a_store_that_cannot_be_written_is_refused_clearly_and_starts_nothing(agent: Agent) -> None:
    agent.store.failing = True
    with pytest.raises(grpc.RpcError) as e:
        launch(agent, "refused", [PY, "-c", "print('must not run')"])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cannot be written" in (e.value.details() or "")
    assert not (agent.roots.jobs_root / "refused").exists()  # no process, no runtime files
    assert list(agent.stub.ListJobs(apb.ListJobsRequest(), timeout=10).jobs) == []
    assert agent.stub.GetNode(apb.GetNodeRequest(), timeout=10).node_name == "node-test"  # still serving
    agent.store.failing = False
    st = launch(agent, "refused", [PY, "-c", "pass"])  # the same launch works once the store does
    assert st.runtime_id


def test_an_end_that_cannot_be_recorded_is_kept_running_then_recorded_once_the_store_heals(
        agent: Agent, tmp_path: Path) -> None:
    go = tmp_path / "go"
    st = launch(agent, "ender", [PY, "-c", WAITER, str(go)])
    assert st.state == pb.AGENT_JOB_STATE_RUNNING
    agent.store.failing = True
    refused = agent.store.refused
    go.touch()  # the job exits 3 now, while its end cannot be written
    wait_for(lambda: agent.store.refused > refused + 2, what="the supervisor to try recording the end")
    inspected = agent.stub.Inspect(apb.InspectRequest(job_id="ender"), timeout=10)
    assert inspected.state == pb.AGENT_JOB_STATE_RUNNING  # not LOST, not forgotten: the end is still owed
    assert agent.sup._thread is not None and agent.sup._thread.is_alive()
    agent.store.failing = False
    done = wait_for(lambda: (s := agent.stub.Inspect(apb.InspectRequest(job_id="ender"), timeout=10)).state
                    == pb.AGENT_JOB_STATE_FAILED and s, what="the end to be recorded")
    assert done.exit_code == 3
    assert agent.store.gpu_holds() == {}
