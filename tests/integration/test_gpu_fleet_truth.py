"""Issue 15 through the coordinator: a process nobody scheduled on a node's fake GPU is shown by
ListNodes and `gpufleet nodes show`, counted on the coordinator's /metrics, recorded as node events
when it appears and when it is gone, and its GPU gets no job meanwhile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import sqlalchemy as sa
from gpufleet.coordinator.db import engine as dbengine
from gpufleet.coordinator.db.schema import events

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc, free_port, wait_for
from tests.integration.test_metrics import scrape, values

PY = sys.executable


def node_events(c: CoordinatorProc, node: str) -> list[str]:
    eng = dbengine.make_engine(dbengine.default_sqlite_url(c.root / "state"))
    try:
        with eng.connect() as conn:
            return [r.reason for r in conn.execute(
                sa.select(events.c.reason).where(events.c.entity == "node", events.c.entity_id == node)
                .order_by(events.c.id))]
    finally:
        eng.dispose()


def test_a_foreign_process_is_shown_counted_recorded_and_its_gpu_is_not_given(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    control = tmp_path / "gpu-procs.json"
    control.write_text("{}")
    mport = free_port()
    c = coordinator_factory(extra=["--metrics-listen", f"127.0.0.1:{mport}"])
    a = agent_factory("a", gpus="fake:1", extra=["--coordinator", c.addr],
                      env={"GPUFLEET_FAKE_GPU_PROCESSES": str(control)})
    foreign = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"])
    try:
        control.write_text(json.dumps({"0": [[foreign.pid, 8 << 30]]}))

        def shown() -> cpb.Node | None:
            nodes = c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
            return nodes[0] if nodes and nodes[0].gpus and nodes[0].gpus[0].processes else None
        node = wait_for(shown, 60, "the foreign process on the node's GPU")
        g = node.gpus[0]
        assert [(p.pid, p.kind, p.used_bytes) for p in g.processes] == [(foreign.pid, "foreign", 8 << 30)]
        assert not g.healthy and "foreign process" in g.health_reason

        env = {**os.environ, "GPUFLEET_COORDINATOR": c.addr}
        out = subprocess.run([PY, "-m", "gpufleet.cli", "nodes", "show", a.node_name], capture_output=True,
                             text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert "GPU processes" in out.stdout and "foreign" in out.stdout and str(foreign.pid) in out.stdout

        assert values(scrape(mport), "gpufleet_node_gpu_processes", node=a.node_name, kind="foreign") == [1.0]
        appeared = f"GPU 0: foreign process pid {foreign.pid} (8192 MiB) appeared"
        wait_for(lambda: appeared in node_events(c, a.node_name), 30, "the node event")

        # Its only GPU is held back: a job waits in the queue.
        job = c.stub.SubmitJob(cpb.SubmitJobRequest(name="waits", gpus=1, spec=pb.JobSpec(
            command=[PY, "-c", "pass"], output_dir="waits")), timeout=10)
        waiting = wait_for(lambda: (j := c.stub.GetJob(cpb.JobRef(job_id=job.job_id), timeout=5)).pending_code
                           and j, 30, "the scheduler's reason for the wait")
        assert waiting.status_name == "QUEUED", waiting
    finally:
        foreign.kill()
        foreign.wait()
    # Gone from the GPU: recorded, counted 0, and the job runs.
    gone = f"GPU 0: foreign process pid {foreign.pid} (8192 MiB) gone"
    wait_for(lambda: gone in node_events(c, a.node_name), 60, "the node event of its end")
    assert values(scrape(mport), "gpufleet_node_gpu_processes", node=a.node_name, kind="foreign") == [0.0]
    wait_for(lambda: c.stub.GetJob(cpb.JobRef(job_id=job.job_id), timeout=5).status_name == "SUCCESS", 60,
             "the queued job run once the GPU is free")
