"""Matrix 6: the agent's state dir on a full disk (a 6 MiB tmpfs filled to ENOSPC).

The agent (process runtime) keeps its SQLite store and every job's runtime files (handle.json,
child.pid, output.log, exit.json: agent/runtime/wrapper.py) in --state-dir, so a full state dir
hits both. What must hold while it is full:
- a new Launch is refused with RESOURCE_EXHAUSTED naming the state dir, and leaves nothing
  behind (no record, no GPU held, no output or job folder);
- a job already running stays tracked (RUNNING, its process alive, never LOST) even when it
  prints more than a pipe holds or ends while nothing can be written;
and once space returns the job's true end (exit code) is recorded and Launch works again.

Needs `mount -t tmpfs` (root in a mount namespace that allows it); skipped with the reason when
the mount is refused (an environment limit, not a code problem, also under CI=true).
"""
from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import AgentProc, healthy, pid_alive, state_name, wait_for
from tests.integration.test_coordinator_reconcile import holds
from tests.invariants import assert_invariants

pytestmark = pytest.mark.slow

PY = sys.executable
TMPFS_SIZE = "6m"

# A job that waits for files in its output folder (which is NOT on the small tmpfs):
#   `noisy`   -> prints 256 KiB at once (four pipes' worth), then writes `dumped`;
#   `release` -> prints "bye", writes `exiting` and exits with the code in the file.
JOB = textwrap.dedent(
    """
    import os, sys, time
    def wait(name):
        while not os.path.exists(name):
            if os.path.exists('release') and name != 'release':
                return False
            time.sleep(0.02)
        return True
    open('runs', 'a').write('run\\n')
    print('job: waiting', flush=True)
    if wait('noisy'):
        for _ in range(256):
            sys.stdout.write('x' * 1023 + '\\n')
        sys.stdout.flush()
        open('dumped', 'w').close()
    wait('release')
    print('bye', flush=True)
    code = int(open('release').read().strip() or 0)
    open('exiting', 'w').close()
    sys.exit(code)
    """
)


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the state dir (needs root and mount permission): "
                    f"{(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def full_disk_agent(tmp_path: Path) -> Iterator[AgentProc]:
    """An agent (process runtime, fake:4) whose --state-dir is a 6 MiB tmpfs."""
    root = tmp_path / "a"
    _mount_tmpfs(root / "state")
    a = AgentProc(root)
    try:
        a.start()
        yield a
    finally:
        a.kill()
        a.cleanup_jobs()  # reads child.pid files on the tmpfs: before the unmount
        _unmount(root / "state")


def fill(folder: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC; return it (delete it to free the space)."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Top up the last partial block, so that not even a page is left.
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(folder).f_bavail == 0
    return filler


def recycle_wal(a: AgentProc) -> None:
    """Checkpoint the agent's WAL while there is still room (as SQLite's auto-checkpoint does on a
    long-running agent): the next transactions reuse the WAL file's existing pages, so SQLite
    itself may well accept writes on a full disk, and the agent cannot rely on it to say so."""
    def checkpointed() -> bool:
        db = sqlite3.connect(str(a.state_dir / "agent.db"), timeout=10)
        try:
            busy, wal_pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            db.close()
        return busy == 0 and wal_pages == done

    wait_for(checkpointed, 10, "a complete checkpoint of the agent's WAL")


def running_with_pid_files(a: AgentProc, job_id: str) -> tuple[int, int]:
    """(wrapper pid, job pid) once the job runs and the wrapper wrote child.pid."""
    st = a.wait_state(job_id, "RUNNING")
    pid_file = a.state_dir / "jobs" / job_id / "1" / "child.pid"
    child = int(wait_for(lambda: pid_file.read_text() if pid_file.exists() else "", 10, f"{job_id} child.pid"))
    wait_for(lambda: b"job: waiting" in a.logs(job_id), 10, f"{job_id} to start its work")
    return int(st.runtime_id), child


def touch(a: AgentProc, output_dir: str, name: str, text: str = "") -> None:
    folder = a.output_root / output_dir
    (folder / f"{name}.tmp").write_text(text)
    os.replace(folder / f"{name}.tmp", folder / name)


def held_gpus(a: AgentProc) -> dict[int, str]:
    node = a.stub.GetNode(apb.GetNodeRequest(), timeout=5)
    return {g.index: g.assigned_job_id for g in node.gpus if g.assigned_job_id}


def test_full_state_dir_refuses_launches_keeps_the_running_job_and_recovers(full_disk_agent: AgentProc) -> None:
    a = full_disk_agent
    a.launch("keep", [PY, "-c", JOB], gpus=[0])
    wrapper, child = running_with_pid_files(a, "keep")
    recycle_wal(a)
    filler = fill(a.state_dir)

    # A new launch: refused, clearly, and nothing of it is left anywhere.
    with pytest.raises(grpc.RpcError) as refused:
        a.launch("fresh", [PY, "-c", "print('fresh ran')"], gpus=[1])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    details = refused.value.details() or ""
    assert str(a.state_dir) in details and "full" in details, details
    with pytest.raises(grpc.RpcError) as unknown:
        a.inspect("fresh")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert [j.job_id for j in a.stub.ListJobs(apb.ListJobsRequest(), timeout=5).jobs] == ["keep"]
    assert held_gpus(a) == {0: "keep"}
    assert not (a.output_root / "fresh").exists() and not (a.state_dir / "jobs" / "fresh").exists()

    # The running job prints four pipes' worth while nothing can be logged: it must not block on
    # its own output, and it stays tracked (never LOST) with its processes alive.
    touch(a, "keep", "noisy")
    wait_for(lambda: (a.output_root / "keep" / "dumped").exists(), 15,
             "the job to get its 256 KiB of output out while the state dir is full")
    st = a.inspect("keep")
    assert state_name(st.state) == "RUNNING", st
    assert pid_alive(wrapper) and pid_alive(child)
    assert a.daemon.proc is not None and a.daemon.proc.poll() is None, a.daemon.log_tail()

    # Space comes back: the job ends with its real exit code, its log says what was dropped.
    filler.unlink()
    touch(a, "keep", "release", "0")
    done = a.wait_state("keep", "SUCCEEDED", "FAILED", "STOPPED", "LOST")
    assert state_name(done.state) == "SUCCEEDED" and done.HasField("exit_code") and done.exit_code == 0, done
    log = a.logs("keep")
    assert b"bye" in log and b"dropped" in log, log[-500:]
    assert not pid_alive(child)
    assert held_gpus(a) == {}
    wait_for(lambda: healthy(a.channel), 10, "agent health SERVING once space is back")  # type: ignore[arg-type]

    # And the launch that was refused now works (it was never recorded, so it is not fenced).
    a.launch("fresh", [PY, "-c", "print('fresh ran')"], gpus=[1])
    fresh = a.wait_state("fresh", "SUCCEEDED", "FAILED", "STOPPED", "LOST")
    assert state_name(fresh.state) == "SUCCEEDED" and b"fresh ran" in a.logs("fresh"), fresh
    assert (a.output_root / "keep" / "runs").read_text() == "run\n"
    assert_invariants(None, {a.node_name: a.state_dir}, None, settled=True)


def test_job_ending_while_the_state_dir_is_full_keeps_its_exit_code(full_disk_agent: AgentProc) -> None:
    a = full_disk_agent
    a.launch("ender", [PY, "-c", JOB], gpus=[2])
    wrapper, child = running_with_pid_files(a, "ender")
    filler = fill(a.state_dir)

    # The job ends (exit 7) while its exit code cannot be written down.
    touch(a, "ender", "release", "7")
    wait_for(lambda: (a.output_root / "ender" / "exiting").exists() and not pid_alive(child), 15,
             "the job's own process to exit")
    # The wrapper holds the exit code until it can record it: the agent never calls it LOST.
    holds(lambda: state_name(a.inspect("ender").state) == "RUNNING" and pid_alive(wrapper), 1.5,
          "job RUNNING (wrapper alive) while its exit code cannot be written")

    filler.unlink()
    done = a.wait_state("ender", "SUCCEEDED", "FAILED", "STOPPED", "LOST", timeout=20)
    assert state_name(done.state) == "FAILED" and done.exit_code == 7 and done.signal == 0, done
    assert held_gpus(a) == {}
    assert_invariants(None, {a.node_name: a.state_dir}, None, settled=True)
