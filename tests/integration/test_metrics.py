"""/metrics scraped over HTTP and parsed, on real agents: in-process (store, supervisor, process runtime,
fake GPUs, the real servicer behind the RPC interceptor) and as daemons started with --metrics-listen.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gpufleet.agent.gpus import FakeGpus, GpuMonitor
from gpufleet.agent.metrics import AgentCollector
from gpufleet.agent.runtime.process import ProcessRuntime
from gpufleet.agent.service import AgentService, add_to_server
from gpufleet.agent.spec import Roots
from gpufleet.agent.store import Store
from gpufleet.agent.supervisor import Supervisor
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.metrics import RpcMetricsInterceptor, new_registry, start_http, stop_http
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from tests.harness import AgentProc, CoordinatorProc, free_port, wait_for

PY = sys.executable
# {sample name (DCGM_FI_DEV_GPU_UTIL, gpufleet_rpc_total, ..._count): [(sample name, labels, value)]}
Samples = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.name, s.labels, s.value))
    return out


def values(m: Samples, name: str, **labels: str) -> list[float]:
    return [v for _, lab, v in m.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]


def running(s: Samples) -> Samples | None:
    return s if values(s, "gpufleet_agent_jobs", state="RUNNING") == [1.0] else None


def stopped(s: Samples) -> Samples | None:
    return s if values(s, "gpufleet_agent_jobs", state="STOPPED") == [1.0] else None


# ---------------------------------------------------------------------------------------------
# in process: the agent's parts put together as agent/main.py does, metrics on port 0


@dataclass
class InProcessAgent:
    store: Store
    monitor: GpuMonitor
    sup: Supervisor
    server: grpc.Server
    stub: agent_pb2_grpc.AgentStub
    channel: grpc.Channel
    metrics_port: int
    jobs_root: Path


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProcessAgent]:
    roots = Roots(tmp_path / "out", tmp_path / "data", tmp_path / "state" / "jobs")
    for p in (roots.output_root, roots.data_root, roots.jobs_root):
        p.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "state" / "agent.db")
    monitor = GpuMonitor(FakeGpus(4, seed=3), interval=0.2)
    monitor.start()
    sup = Supervisor(store, ProcessRuntime(roots.jobs_root), monitor, roots,
                     base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, poll_interval=0.1)
    sup.restore()
    registry = new_registry()
    registry.register(AgentCollector(sup, monitor, "node-test"))
    server = grpc.server(futures.ThreadPoolExecutor(8), interceptors=[RpcMetricsInterceptor(registry)])
    add_to_server(AgentService(sup, monitor, "node-test"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sup.start()
    http, metrics_port = start_http("127.0.0.1:0", registry)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield InProcessAgent(store, monitor, sup, server, agent_pb2_grpc.AgentStub(channel), channel,
                             metrics_port, roots.jobs_root)
    finally:
        channel.close()
        stop_http(http)
        server.stop(None).wait()
        sup.close()
        monitor.stop()
        for pidfile in roots.jobs_root.glob("*/*/child.pid"):
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        store.close()


def test_in_process_scrape_shows_dcgm_gauges_with_the_job_on_its_gpu(inproc: InProcessAgent) -> None:
    st = inproc.stub.Launch(apb.LaunchRequest(
        job_id="metrics-job", attempt=1, gpu_indices=[1],
        spec=pb.JobSpec(command=[PY, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                        output_dir="metrics-job")), timeout=30)
    assert st.runtime_id

    m = wait_for(lambda: running(scrape(inproc.metrics_port)), what="the running job in /metrics")
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED",
                 "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "gpufleet_gpu_healthy"):
        series = m[name]
        assert len(series) == 4, name
        held = [lab for _, lab, _ in series if lab["gpu"] == "1"]
        assert held and held[0]["job_id"] == "metrics-job" and held[0]["attempt"] == "1", (name, held)
        assert held[0]["Hostname"] == "node-test" and held[0]["UUID"].startswith("GPU-fake-1-")
        assert held[0]["modelName"] == "Fake GPU"
        free = [lab for _, lab, _ in series if lab["gpu"] != "1"]
        assert all(lab["job_id"] == "" and lab["attempt"] == "" for lab in free)
    # Fake GPUs show load from the first sample after a job holds them (issue 15: idle reads idle).
    used = wait_for(lambda: values(scrape(inproc.metrics_port), "DCGM_FI_DEV_FB_USED", gpu="1")[0] or None,
                    what="load on the held fake GPU")
    assert values(m, "DCGM_FI_DEV_FB_USED", gpu="0") == [0.0]
    # Per-job GPU accounting (issue 15) and the exclusivity counts are in the same scrape.
    wait_for(lambda: (v := values(scrape(inproc.metrics_port), "gpufleet_job_gpu_seconds", job_id="metrics-job"))
             and v[0] > 0, what="GPU-seconds of the running job")
    assert values(m, "gpufleet_gpu_processes", gpu="0", kind="foreign") == [0.0]
    assert 512 <= used <= 80 * 1024  # MiB of an 80 GiB fake GPU
    assert values(m, "gpufleet_agent_runtime_up") == [1.0]
    assert values(m, "gpufleet_agent_last_tick_age_seconds")[0] < 10
    assert values(m, "gpufleet_gpus", source="fake") == [4.0]
    # The Launch went through the interceptor.
    assert values(m, "gpufleet_rpc_total", service="gpufleet.v1.Agent", method="Launch", code="OK") == [1.0]
    assert "process_resident_memory_bytes" in m or "python_info" in m

    # A bad call is counted with its code; the job is stopped and its GPU reads free again.
    with pytest.raises(grpc.RpcError) as e:
        inproc.stub.Inspect(apb.InspectRequest(job_id="no-such-job"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    inproc.stub.Stop(apb.StopRequest(job_id="metrics-job", grace_seconds=1), timeout=20)
    after = wait_for(lambda: stopped(scrape(inproc.metrics_port)), what="the stopped job in /metrics")
    assert [lab["job_id"] for _, lab, _ in after["DCGM_FI_DEV_GPU_UTIL"]] == ["", "", "", ""]
    assert values(after, "gpufleet_rpc_total", method="Inspect", code="NOT_FOUND") == [1.0]
    assert values(after, "gpufleet_rpc_total", method="Stop", code="OK") == [1.0]
    assert values(after, "gpufleet_rpc_duration_seconds_count", method="Launch", code="OK") == [1.0]


def test_in_process_unhealthy_gpu_and_scrape_cost(inproc: InProcessAgent) -> None:
    inproc.stub.SetGpuHealth(apb.SetGpuHealthRequest(index=2, healthy=False, reason="test"), timeout=5)
    m = scrape(inproc.metrics_port)
    assert values(m, "gpufleet_gpu_healthy", gpu="2") == [0.0]
    assert values(m, "gpufleet_gpu_healthy", gpu="0") == [1.0]
    # A scrape reads the monitor's last sample; it must not take a fresh one.
    taken = inproc.monitor.samples_taken
    start = time.perf_counter()
    for _ in range(20):
        scrape(inproc.metrics_port)
    per_scrape = (time.perf_counter() - start) / 20
    assert inproc.monitor.samples_taken - taken <= per_scrape * 20 / inproc.monitor.interval + 2
    assert per_scrape < 0.25, f"a scrape took {per_scrape * 1000:.1f} ms"


# ---------------------------------------------------------------------------------------------
# the daemons, once agent/main.py and coordinator/main.py have --metrics-listen


def test_agent_daemon_serves_metrics(agent_factory: Callable[..., AgentProc]) -> None:
    port = free_port()
    a = agent_factory("m", extra=["--metrics-listen", f"127.0.0.1:{port}"])
    a.launch("dj1", [PY, "-c", "import time; time.sleep(60)"], gpus=[0, 3])
    def launched(s: Samples) -> Samples | None:  # the RPC counter moves as the handler returns
        return s if running(s) and values(s, "gpufleet_rpc_total", method="Launch", code="OK") else None

    m = wait_for(lambda: launched(scrape(port)), what="the running job in the agent's /metrics")
    for gpu in ("0", "3"):
        assert [lab["job_id"] for _, lab, _ in m["DCGM_FI_DEV_GPU_UTIL"] if lab["gpu"] == gpu] == ["dj1"]
    assert values(m, "DCGM_FI_DEV_GPU_UTIL", gpu="1", job_id="")
    assert values(m, "gpufleet_agent_runtime_up") == [1.0]
    assert values(m, "gpufleet_gpus", source="fake") == [4.0]
    # the RPC interceptor is wired into the agent's gRPC server too
    assert values(m, "gpufleet_rpc_total", method="Launch", code="OK") == [1.0]


def test_coordinator_daemon_serves_metrics(coordinator_factory: Callable[..., CoordinatorProc],
                                           agent_factory: Callable[..., AgentProc]) -> None:
    cport = free_port()
    c = coordinator_factory(extra=["--metrics-listen", f"127.0.0.1:{cport}"])
    agent_factory("a1", extra=["--coordinator", c.addr, "--metrics-listen", f"127.0.0.1:{free_port()}"])
    fleet = {"service": "gpufleet.v1.Fleet", "method": "Register", "code": "OK"}

    def ready(s: Samples) -> Samples | None:
        # The RPC counter moves as the handler returns, just after the node row is committed: wait for both.
        return s if (values(s, "gpufleet_nodes", state="READY") == [1.0]
                     and values(s, "gpufleet_rpc_total", **fleet)) else None

    m = wait_for(lambda: ready(scrape(cport)), what="the registered node in the coordinator's /metrics")
    assert values(m, "gpufleet_queue_depth") == [0.0]
    assert values(m, "gpufleet_coordinator_db_up") == [1.0]
    assert values(m, "gpufleet_placements_total") == [0.0]
    assert "gpufleet_jobs" in m and "gpufleet_placement_duration_seconds_count" in m
    # the RPC interceptor is wired into the coordinator's gRPC server too
    assert values(m, "gpufleet_rpc_total", **fleet) == [1.0]
