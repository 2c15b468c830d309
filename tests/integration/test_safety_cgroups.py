"""Issue 13: each process-runtime job in its own cgroup, so a job cannot outlive its end or its stop.

A real agent; the job starts a daemon in a session of its own (out of reach of the job's process
group), then waits. The daemon is found in the job's cgroup, and is gone once the job has ended
or been stopped. Skipped where the host gives no writable cgroup v2 hierarchy (agent/cgroups.py
then runs jobs contained by their process group only, as before).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpufleet.agent.cgroups import JobCgroups

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import AgentProc, pid_alive, release, wait_for

JOB = (
    "import os, pathlib, time\n"
    "out = pathlib.Path(os.environ['GPUFLEET_OUTPUT_DIR'])\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.setsid()\n"  # a session of its own: killpg of the job's group does not reach it
    "    if os.fork() == 0:\n"
    "        (out / 'daemon.tmp').write_text(str(os.getpid()))\n"
    "        os.replace(out / 'daemon.tmp', out / 'daemon.pid')\n"
    "        time.sleep(3600)\n"
    "    os._exit(0)\n"
    "os.waitpid(pid, 0)\n"
    "while not (out / 'release').exists():\n"
    "    time.sleep(0.05)\n"
)


@pytest.fixture
def contained(agent: AgentProc) -> Iterator[tuple[AgentProc, JobCgroups]]:
    cg = JobCgroups.detect(agent.state_dir / "jobs")  # the agent's own, by the same digest
    if cg is None:
        pytest.skip("no writable cgroup v2 hierarchy on this host: jobs are contained by process group only")
    yield agent, cg
    agent.kill()
    agent.cleanup_jobs()
    for d in [*(p for p in cg.base.iterdir() if p.is_dir()), cg.base]:  # cgroups go by rmdir, once empty
        try:
            d.rmdir()
        except OSError:
            pass


def _daemon(agent: AgentProc, job: str) -> int:
    path = agent.output_root / job / "daemon.pid"
    return int(wait_for(lambda: path.exists() and path.read_text(), 30, f"{job}'s daemon started"))


def test_what_a_job_leaves_behind_ends_with_it(contained: tuple[AgentProc, JobCgroups]) -> None:
    agent, cg = contained
    agent.launch("cg1", [shutil.which("python3") or "python3", "-c", JOB])
    daemon = _daemon(agent, "cg1")
    cgroup = Path(f"/proc/{daemon}/cgroup").read_text()
    assert f"/{cg.base.name}/cg1-1" in cgroup, cgroup  # born in the job's cgroup, whatever its session
    assert b"GPUFLEET_CGROUP" not in Path(f"/proc/{daemon}/environ").read_bytes()
    release(agent, "cg1")
    agent.wait_state("cg1", "SUCCEEDED")
    wait_for(lambda: not pid_alive(daemon), 30, "the job's daemon killed when the job ended")


def test_a_stopped_job_leaves_nothing_running(contained: tuple[AgentProc, JobCgroups]) -> None:
    agent, _ = contained
    agent.launch("cg2", [shutil.which("python3") or "python3", "-c", JOB])
    daemon = _daemon(agent, "cg2")
    agent.stub.Stop(apb.StopRequest(job_id="cg2", grace_seconds=1), timeout=30)
    agent.wait_state("cg2", "STOPPED", "FAILED")
    wait_for(lambda: not pid_alive(daemon), 30, "the stopped job's daemon killed")
