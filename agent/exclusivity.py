"""Who is really on each GPU (issue 15): attribute NVML's compute processes to the agent's jobs.

Each GPU sample carries the pids on the GPU (NVML's compute-process list; fake GPUs read them from
a control file, below). `judge` attributes every pid:

- a job's process: the job's wrapper pid is an ancestor (process runtime), or the pid's cgroup
  names the job's container id (docker);
- *escaped*: a live job's process on a GPU the job was not assigned;
- *foreign*: no live job owns it (started outside gpufleet, or left behind by an ended job).

A GPU with a foreign process is reported unhealthy ("foreign process pid N ...") so the scheduler
does not offer it until it is free; GetNode, `nodes show` and /metrics show the reason. Escaped
processes are named in the reason of the GPU they are on, which stays offered (the job's own GPU
still belongs to it). Not built yet: orphan-vs-foreign distinction, killing orphans after a grace
period, a warn-only switch.

Fake control (tests, demo fleets): with `GPUFLEET_FAKE_GPU_PROCESSES=<file>` in the agent's
environment, fake GPUs report the pids that file lists: `{"<gpu index>": [[pid, bytes], ...]}`,
re-read at every sample.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

FAKE_CONTROL_ENV = "GPUFLEET_FAKE_GPU_PROCESSES"
_MAX_DEPTH = 64  # ancestor walk bound: pid trees are shallow; a loop must not hang the sampler


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int = 0
    kind: str = ""  # "job", "escaped", "foreign" once judged
    job_id: str = ""


@dataclass(frozen=True)
class Owner:
    """A live job as exclusivity sees it."""

    job_id: str
    gpu_indices: frozenset[int]
    runtime: str  # "process" | "docker"
    runtime_id: str  # wrapper pid or container id


def owners_from(records: Iterable[Any]) -> list[Owner]:
    """Owners from the supervisor's job records: live jobs that have a runtime id."""
    from gpufleet.agent.states import LIVE

    return [Owner(r.job_id, frozenset(r.gpu_indices), r.runtime, r.runtime_id)
            for r in records if r.state in LIVE and r.runtime_id]


def fake_processes(index: int) -> tuple[GpuProcess, ...]:
    """The pids the fake-control file puts on fake GPU `index` (none without the file)."""
    path = os.environ.get(FAKE_CONTROL_ENV, "")
    if not path:
        return ()
    try:
        data = json.loads(Path(path).read_text())
        rows = data.get(str(index), []) if isinstance(data, dict) else []
        return tuple(GpuProcess(int(r[0]), int(r[1]) if len(r) > 1 else 0) for r in rows)
    except (OSError, ValueError, TypeError, IndexError):
        return ()


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


def judge(samples: list[Any], owners: list[Owner], proc: Path = Path("/proc")) -> list[Any]:
    """Samples with every process attributed, and foreign-held GPUs reported unhealthy."""
    out = []
    for s in samples:
        if not s.processes:
            out.append(s)
            continue
        judged = []
        for p in s.processes:
            o = owner_of(p.pid, owners, proc)
            if o is None:
                judged.append(replace(p, kind="foreign", job_id=""))
            elif s.index in o.gpu_indices:
                judged.append(replace(p, kind="job", job_id=o.job_id))
            else:
                judged.append(replace(p, kind="escaped", job_id=o.job_id))
        notes = [f"{p.kind} process pid {p.pid}" + (f" of job {p.job_id}" if p.job_id else "")
                 + f" ({p.used_bytes // (1024 * 1024)} MiB)" for p in judged if p.kind != "job"]
        foreign = any(p.kind == "foreign" for p in judged)
        reason = "; ".join(r for r in [s.health_reason, *notes] if r)
        out.append(replace(s, processes=tuple(judged), healthy=s.healthy and not foreign, health_reason=reason))
    return out
