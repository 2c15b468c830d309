"""Who is on each GPU (agent/exclusivity.py) and the orphan reaper (agent/orphans.py), over a /proc
tree written in tmp_path: a job's process, an escaped one, an orphan of an ended job, a foreign one."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from gpufleet.agent.exclusivity import GpuProcess, Owner, judge
from gpufleet.agent.gpus import GpuSample
from gpufleet.agent.orphans import OrphanReaper

MIB = 1024 * 1024


def proc_entry(root: Path, pid: int, ppid: int, env: dict[str, str] | None = None) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (python3 (x)) S {ppid} {pid} {pid} 0 -1\n")
    (d / "cgroup").write_text("0::/user.slice\n")
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in (env or {}).items()))


def sample(index: int, *pids: int) -> GpuSample:
    return GpuSample(index, f"GPU-{index}", "x", 50, 0, 1, 100, 30, 100, 700, 0, True,
                     processes=tuple(GpuProcess(p, 512 * MIB) for p in pids))


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    proc_entry(root, 100, 1)  # the live job's wrapper
    proc_entry(root, 101, 100, {"GPUFLEET_JOB_ID": "live", "GPUFLEET_ATTEMPT": "2"})  # its trainer
    proc_entry(root, 200, 1, {"GPUFLEET_JOB_ID": "done", "GPUFLEET_ATTEMPT": "1"})  # left by an ended job
    proc_entry(root, 201, 1, {"GPUFLEET_JOB_ID": "live", "GPUFLEET_ATTEMPT": "1"})  # an older attempt's
    proc_entry(root, 202, 1, {"GPUFLEET_JOB_ID": "live", "GPUFLEET_ATTEMPT": "2"})  # claims the live job
    proc_entry(root, 300, 1)  # started outside gpufleet
    return root


OWNERS = [Owner("live", frozenset({0}), "process", "100", attempt=2)]


def test_each_process_is_attributed_and_foreign_or_orphan_gpus_are_held_back(proc: Path) -> None:
    out = judge([sample(0, 101), sample(1, 101), sample(2, 200, 201), sample(3, 300), sample(4, 202)], OWNERS,
                proc)
    kinds = {s.index: [(p.pid, p.kind, p.job_id) for p in s.processes] for s in out}
    assert kinds == {0: [(101, "job", "live")], 1: [(101, "escaped", "live")],
                     2: [(200, "orphan", "done"), (201, "orphan", "live")], 3: [(300, "foreign", "")],
                     4: [(202, "foreign", "")]}  # the environment never makes a process a live job's
    healthy = {s.index: s.healthy for s in out}
    assert healthy == {0: True, 1: True, 2: False, 3: False, 4: False}
    assert "orphan process pid 200 of job done (512 MiB)" in out[2].health_reason
    assert "escaped process pid 101 of job live" in out[1].health_reason and out[0].health_reason == ""


def test_warn_only_keeps_every_gpu_offered_and_says_why(proc: Path) -> None:
    out = judge([sample(2, 200), sample(3, 300)], OWNERS, proc, warn_only=True)
    assert all(s.healthy for s in out)
    assert "orphan process pid 200" in out[0].health_reason and "foreign process pid 300" in out[1].health_reason


def test_an_orphan_is_killed_once_its_grace_is_over_and_never_a_reused_pid(proc: Path) -> None:
    now = [0.0]
    kills: list[tuple[int, int]] = []
    reaper = OrphanReaper(10, kill=lambda pid, sig: kills.append((pid, sig)), clock=lambda: now[0], proc=proc)
    judged = judge([sample(2, 200, 300)], OWNERS, proc)
    assert reaper.run(judged) == [] and kills == []
    now[0] = 9.9
    assert reaper.run(judged) == []
    now[0] = 10.0
    (killed,) = reaper.run(judged)
    assert (killed.pid, killed.job_id, killed.gpu) == (200, "done", 2)
    assert kills == [(200, signal.SIGKILL)] and reaper.killed_total == 1  # the foreign process is left alone
    # A pid that is gone, then reused by another process before its grace ran out, is not killed.
    reaper.run(judged)
    now[0] = 30.0
    (proc / "200" / "environ").write_bytes(b"HOME=/root\0")
    assert reaper.run(judged) == [] and kills == [(200, signal.SIGKILL)]


def test_grace_zero_never_kills(proc: Path) -> None:
    now = [0.0]
    reaper = OrphanReaper(0, kill=lambda pid, sig: pytest.fail("killed"), clock=lambda: now[0], proc=proc)
    judged = judge([sample(2, 200)], OWNERS, proc)
    for t in (0.0, 1e6):
        now[0] = t
        assert reaper.run(judged) == []
