"""Who is really on each GPU (issue 15): attribute NVML's compute processes to the agent's jobs.

Each GPU sample carries the pids on the GPU (NVML's compute-process list; fake GPUs read them from
a control file, below). `judge` attributes every pid:

- a job's process: the job's wrapper pid is an ancestor (process runtime), or the pid's cgroup
  names the job's container id (docker);
- *escaped*: a live job's process on a GPU the job was not assigned;
- *orphan*: no live job owns it, but its environment names a job of this agent's
  (GPUFLEET_JOB_ID, which every job's processes inherit): left behind by a job that ended;
- *foreign*: no job owns it (started outside gpufleet).

A GPU with a foreign or orphan process is reported unhealthy ("foreign process pid N ...") so the
scheduler does not offer it until it is free; GetNode, `nodes show` and /metrics show the
processes. With `warn_only` (agent flag --gpu-exclusivity warn) such a GPU stays offered and only
the reason says why. Escaped processes are named in the reason of the GPU they are on, which stays
offered (the job's own GPU still belongs to it). Orphans are killed after a grace period
(agent/orphans.py).

The environment is trusted only to tell an orphan from a foreign process, never to make a process
a live job's: a process that names a live job without being in its tree stays foreign.

Fake control (tests, demo fleets): with `GPUFLEET_FAKE_GPU_PROCESSES=<file>` in the agent's
environment, fake GPUs report the pids that file lists: `{"<gpu index>": [[pid, bytes], ...]}`,
re-read at every sample; a pid that no longer exists is left out, as NVML would.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

FAKE_CONTROL_ENV = "GPUFLEET_FAKE_GPU_PROCESSES"
KINDS = ("job", "escaped", "orphan", "foreign")
BLOCKING = frozenset({"foreign", "orphan"})  # kinds that keep a GPU from the scheduler
_MAX_DEPTH = 64  # ancestor walk bound: pid trees are shallow; a loop must not hang the sampler


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int = 0
    kind: str = ""  # "job", "escaped", "orphan", "foreign" once judged
    job_id: str = ""


@dataclass(frozen=True)
class Owner:
    """A live job as exclusivity sees it."""

    job_id: str
    gpu_indices: frozenset[int]
    runtime: str  # "process" | "docker"
    runtime_id: str  # wrapper pid or container id
    attempt: int = 0


def owners_from(records: Iterable[Any]) -> list[Owner]:
    """Owners from the supervisor's job records: live jobs that have a runtime id."""
    from gpufleet.agent.states import LIVE

    return [Owner(r.job_id, frozenset(r.gpu_indices), r.runtime, r.runtime_id, r.attempt)
            for r in records if r.state in LIVE and r.runtime_id]


def fake_processes(index: int) -> tuple[GpuProcess, ...]:
    """The pids the fake-control file puts on fake GPU `index` (none without the file)."""
    path = os.environ.get(FAKE_CONTROL_ENV, "")
    if not path:
        return ()
    try:
        data = json.loads(Path(path).read_text())
        rows = data.get(str(index), []) if isinstance(data, dict) else []
        procs = [GpuProcess(int(r[0]), int(r[1]) if len(r) > 1 else 0) for r in rows]
    except (OSError, ValueError, TypeError, IndexError):
        return ()
    return tuple(p for p in procs if _running(p.pid))


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead process holds no GPU memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def _ppid(pid: int, proc: Path) -> int:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; cut at the last ")".
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _cgroup(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return ""


_MAX_ENVIRON = 256 * 1024


def job_env(pid: int, proc: Path = Path("/proc")) -> tuple[str, int]:
    """GPUFLEET_JOB_ID and GPUFLEET_ATTEMPT from a process's environment; ("", 0) when absent or
    unreadable (another user's process when the agent is not root, a process gone meanwhile)."""
    try:
        with open(proc / str(pid) / "environ", "rb") as f:
            data = f.read(_MAX_ENVIRON)
    except OSError:
        return "", 0
    env = dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    job_id = env.get(b"GPUFLEET_JOB_ID", b"").decode(errors="replace")[:128]
    attempt = env.get(b"GPUFLEET_ATTEMPT", b"0")
    return job_id, int(attempt) if attempt.isdigit() and len(attempt) < 10 else 0


def owner_of(pid: int, owners: Iterable[Owner], proc: Path = Path("/proc")) -> Owner | None:
    owners = list(owners)
    wrappers = {o.runtime_id: o for o in owners if o.runtime == "process" and o.runtime_id.isdigit()}
    containers = [o for o in owners if o.runtime == "docker" and len(o.runtime_id) >= 12]
    if containers:
        cg = _cgroup(pid, proc)
        for o in containers:
            if o.runtime_id in cg:
                return o
    current = pid
    for _ in range(_MAX_DEPTH):
        if str(current) in wrappers:
            return wrappers[str(current)]
        if current <= 1:
            break
        current = _ppid(current, proc)
    return None


def judge(samples: list[Any], owners: list[Owner], proc: Path = Path("/proc"), warn_only: bool = False) -> list[Any]:
    """Samples with every process attributed, and GPUs held by a foreign or orphan process reported
    unhealthy (unless `warn_only`)."""
    live = {(o.job_id, o.attempt) for o in owners}
    out = []
    for s in samples:
        if not s.processes:
            out.append(s)
            continue
        judged = []
        for p in s.processes:
            o = owner_of(p.pid, owners, proc)
            if o is None:
                job_id, attempt = job_env(p.pid, proc)
                ended = bool(job_id) and (job_id, attempt) not in live
                judged.append(replace(p, kind="orphan" if ended else "foreign", job_id=job_id if ended else ""))
            elif s.index in o.gpu_indices:
                judged.append(replace(p, kind="job", job_id=o.job_id))
            else:
                judged.append(replace(p, kind="escaped", job_id=o.job_id))
        notes = [f"{p.kind} process pid {p.pid}" + (f" of job {p.job_id}" if p.job_id else "")
                 + f" ({p.used_bytes // (1024 * 1024)} MiB)" for p in judged if p.kind != "job"]
        blocked = not warn_only and any(p.kind in BLOCKING for p in judged)
        reason = "; ".join(r for r in [s.health_reason, *notes] if r)
        out.append(replace(s, processes=tuple(judged), healthy=s.healthy and not blocked, health_reason=reason))
    return out
