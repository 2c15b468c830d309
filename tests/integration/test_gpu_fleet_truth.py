"""Issue 15 through the coordinator: a process nobody scheduled on a node's fake GPU is shown by
ListNodes and `gpufleet nodes show`, counted on the coordinator's /metrics, recorded as node events
when it appears and when it is gone, and its GPU gets no job meanwhile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
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


def attempts(c: CoordinatorProc, job_id: str) -> list[cpb.Job]:
    """The job's attempts, oldest first (a launch refused because the GPU went bad is queued again)."""
    chain = [c.stub.GetJob(cpb.JobRef(job_id=job_id), timeout=5)]
    while chain[-1].superseded_by:
        chain.append(c.stub.GetJob(cpb.JobRef(job_id=chain[-1].superseded_by), timeout=5))
    return chain


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
    wait_for(lambda: attempts(c, job.job_id)[-1].status_name == "SUCCESS", 60,
             "the queued job run once the GPU is free")
    # Never failed for the foreign process: only a launch that raced the GPU going bad (placed on the
    # snapshot before) is refused, and then queued again without using a retry.
    for earlier in attempts(c, job.job_id)[:-1]:
        assert earlier.status_name == "STOPPED" and "GPU 0 is unhealthy" in earlier.error_message, earlier


@pytest.mark.parametrize("sender", ["scheduler", "reconciler"])
def test_a_launch_that_races_a_gpu_going_bad_is_queued_again_not_failed(
        coordinator_factory: Callable[..., CoordinatorProc], agent_factory: Callable[..., AgentProc],
        tmp_path, sender: str) -> None:  # type: ignore[no-untyped-def]
    """The coordinator placed on a snapshot in which GPU 0 was free; before the Launch reached the
    agent a foreign process took it. The agent refuses (ABORTED), the coordinator queues the job
    again without using a retry, and it runs once the GPU is free. Either sender of the Launch (the
    scheduler after its commit, or the reconciler re-sending an unconfirmed one) ends it the same way."""
    control = tmp_path / "gpu-procs.json"
    control.write_text("{}")
    # Each sender waits at its own gate until the agent has seen the foreign process.
    gates = {"scheduler": tmp_path / "launch-gate", "reconciler": tmp_path / "reconcile-gate"}
    other = gates["reconciler" if sender == "scheduler" else "scheduler"]
    c = coordinator_factory(env={"GPUFLEET_FAILPOINTS": f"coordinator.assign.after_commit=wait={gates['scheduler']};"
                                                        f"loop.reconciler=wait={gates['reconciler']}"})
    a = agent_factory("a", gpus="fake:1", extra=["--coordinator", c.addr],
                      env={"GPUFLEET_FAKE_GPU_PROCESSES": str(control)})
    wait_for(lambda: c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes or None, 30, "the node")
    job = c.stub.SubmitJob(cpb.SubmitJobRequest(name="races", gpus=1, spec=pb.JobSpec(
        command=[PY, "-c", "pass"], output_dir="races")), timeout=10)
    wait_for(lambda: Path(f"{gates['scheduler']}.reached").exists() or None, 30, "the placement on GPU 0")
    foreign = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"])
    try:
        control.write_text(json.dumps({"0": [[foreign.pid, 1 << 30]]}))

        def unhealthy() -> bool:
            g = c.stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes[0].gpus[0]
            return not g.healthy
        wait_for(unhealthy, 30, "the agent to see the foreign process")
        gates[sender].touch()  # this Launch goes out now, to a GPU the agent knows is taken
        wait_for(lambda: len(attempts(c, job.job_id)) == 2 or None, 30, "the job queued again")
        other.touch()  # the other sender finds the attempt ended: it changes nothing
        first, second = attempts(c, job.job_id)
        assert first.status_name == "STOPPED" and "GPU 0 is unhealthy (foreign process" in first.error_message, first
        assert second.retries_used == 0  # the refusal was the coordinator's stale view, not the job's fault
        waiting = wait_for(lambda: (j := c.stub.GetJob(cpb.JobRef(job_id=second.job_id), timeout=5)).pending_code
                           and j, 30, "the reason the new attempt waits")
        assert waiting.status_name == "QUEUED", waiting
    finally:
        foreign.kill()
        foreign.wait()
    wait_for(lambda: attempts(c, job.job_id)[-1].status_name == "SUCCESS", 60, "the job run once the GPU is free")
    assert len(attempts(c, job.job_id)) == 2
    assert a.node_name == attempts(c, job.job_id)[-1].node
