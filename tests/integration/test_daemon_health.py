"""Both daemons built in-process by `build(config)` and started apart from `serve`: gRPC health over
loopback says SERVING, turns NOT_SERVING while one of the daemon's own loops is made to hang (a
failpoint delays one pass far past its interval), and SERVING again once the loop completes a pass.
Also: the one list of loops names each daemon's loops with their intervals."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from gpufleet.agent import main as agent_main
from gpufleet.agent.settings import AgentConfig
from gpufleet.coordinator import main as coordinator_main
from gpufleet.coordinator.settings import CoordinatorConfig
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpufleet import failpoints
from gpufleet.daemon import Daemon
from tests.harness import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def agent_daemon(tmp: Path) -> Daemon:
    return agent_main.build(AgentConfig(
        listen="127.0.0.1:0", state_dir=str(tmp / "agent"), runtime="process", gpus="fake:1",
        output_root=str(tmp / "out"), data_root=str(tmp / "data"), metrics_listen="", poll_interval=0.05,
        gpu_sample_interval=0.05, stale_floor=0.5))


def coordinator_daemon(tmp: Path) -> Daemon:
    return coordinator_main.build(CoordinatorConfig(
        listen="127.0.0.1:0", state_dir=str(tmp / "coordinator"), metrics_listen="", reconcile_interval=0.05,
        schedule_interval=0.05, node_timeout=0.2, stale_floor=0.5))


@pytest.fixture(params=[("agent", agent_daemon, "supervisor"), ("coordinator", coordinator_daemon, "reconciler")],
                ids=["agent", "coordinator"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Daemon, str, Callable[[], int]]]:
    _, make, loop = request.param
    d = make(tmp_path)
    d.start()
    stop = threading.Event()
    watcher = threading.Thread(target=d.watch_health, args=(stop, 0.05), daemon=True)
    watcher.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{d.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        yield d, loop, lambda: stub.Check(health_pb2.HealthCheckRequest(service=d.services[0]), timeout=5).status
    finally:
        failpoints.configure("")
        stop.set()
        watcher.join(timeout=5)
        channel.close()
        d.stop()


def test_health_is_not_serving_while_a_loop_hangs_and_serving_once_it_passes_again(
        running: tuple[Daemon, str, Callable[[], int]]) -> None:
    d, loop, status = running
    wait_for(lambda: status() == SERVING, what="SERVING at start")
    assert d.problems() == []
    failpoints.configure(f"loop.{loop}=delay=4000")  # the next pass hangs 4 s; stale after 0.5 s
    wait_for(lambda: status() == NOT_SERVING, what=f"NOT_SERVING while {loop} hangs")
    assert d.problems() == [f"loop {loop} is stale"]
    failpoints.configure("")
    wait_for(lambda: status() == SERVING, what=f"SERVING once {loop} completes a pass")
    assert (d.state_dir / f"{d.name}.addr").read_text().strip() == f"127.0.0.1:{d.port}"


def test_each_daemon_lists_its_loops_with_their_intervals(tmp_path: Path) -> None:
    a = agent_daemon(tmp_path)
    c = coordinator_daemon(tmp_path)
    try:
        assert [(lp.name, lp.interval, lp.last_pass is not None) for lp in a.loops] == [
            ("gpu-monitor", 0.05, True), ("supervisor", 0.05, True)]
        assert [(lp.name, lp.interval) for lp in c.loops] == [
            ("reconciler", 0.05), ("node-sweep", 0.05), ("scheduler", 0.05), ("keeper", 1.0)]
        assert all(lp.last_pass is not None for lp in c.loops)
    finally:
        for d in (a, c):
            d.stop()
