"""One cgroup v2 per process-runtime job, where the host lets the agent make them.

Layout, below the agent's own cgroup (systemd: the unit's, with `Delegate=yes`):

    agent/                          the agent itself, when controllers must be handed down
    gpufleet-jobs/<agent>/          holds no process (cgroup v2: processes live in leaves only);
                                    <agent> is a digest of the agent's jobs folder, so agents that
                                    share a cgroup (tests, containers) never touch each other's jobs
        wrappers/                   every job's wrapper, once its job has started
        <job_id>-<attempt>/         the job and everything it starts; cpu.max and memory.max
                                    from the spec where the cpu/memory controllers are delegated

The wrapper (agent/runtime/wrapper.py, standard library only) enters the job's cgroup just before
it starts the job, so the job is born inside and no fork can escape it, then parks itself in
wrappers/. When the job's main process ends, the wrapper kills what it left behind (cgroup.kill),
and a stop that comes to SIGKILL kills the whole cgroup too: a job cannot outlive its end or its
stop, whatever session or process group it moved to.

`JobCgroups.detect()` answers None where the host gives no writable cgroup v2 hierarchy (cgroup v1
only, a read-only /sys/fs/cgroup): jobs then run as before, contained by their process group only.
Limits apply only where their controller is enabled; what was applied is logged per job.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.cgroups")
BASE = "gpufleet-jobs"
PARK = "wrappers"
AGENT_LEAF = "agent"  # where the agent moves itself when its own cgroup must hand controllers down
CPU_PERIOD_US = 100_000
# Where the wrapper is told its cgroups (removed from the job's own environment).
ENV_CGROUP = "GPUFLEET_CGROUP"
ENV_PARK = "GPUFLEET_CGROUP_PARK"


def _cgroup2_mount(mountinfo: str) -> Path | None:
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _own_cgroup(proc_cgroup: str) -> str | None:
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def _write(path: Path, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class JobCgroups:
    base: Path  # <cgroup2 mount>/<agent's cgroup>/gpufleet-jobs/<agent>

    @classmethod
    def detect(cls, jobs_root: Path) -> JobCgroups | None:
        try:
            mount = _cgroup2_mount(Path("/proc/self/mountinfo").read_text())
            own = _own_cgroup(Path("/proc/self/cgroup").read_text())
        except OSError:
            return None
        if mount is None or own is None:
            event(log, "cgroups.off", detail="no cgroup v2 hierarchy: jobs are contained by their process group only")
            return None
        parent = mount / own.lstrip("/")
        agent = hashlib.sha256(str(jobs_root.resolve()).encode()).hexdigest()[:12]
        base = parent / BASE / agent
        try:
            base.mkdir(parents=True, exist_ok=True)
            (base / PARK).mkdir(exist_ok=True)
        except OSError as exc:
            event(log, "cgroups.off", detail=f"cannot make {base}: {exc.strerror}; jobs are contained by their "
                                             "process group only (systemd: Delegate=yes)")
            return None
        # Hand the cpu and memory controllers down where the parent has them (where they are not
        # delegated this fails harmlessly: limits are then not applied, containment still is).
        wanted = [c for c in ("cpu", "memory") if c in _read(parent / "cgroup.controllers").split()]
        if wanted and not all(_write(parent / "cgroup.subtree_control", f"+{c}") for c in wanted):
            # cgroup v2 keeps processes out of a cgroup that hands controllers down (EBUSY): the agent
            # moves itself into a leaf of its own cgroup, systemd's pattern for Delegate=yes, and retries.
            leaf = parent / AGENT_LEAF
            try:
                leaf.mkdir(exist_ok=True)
            except OSError:
                pass
            if _write(leaf / "cgroup.procs", str(os.getpid())):
                for c in wanted:
                    _write(parent / "cgroup.subtree_control", f"+{c}")
        for where in (parent / BASE, base):
            for c in wanted:
                _write(where / "cgroup.subtree_control", f"+{c}")
        event(log, "cgroups.on", base=str(base),
              controllers=_read(base / "cgroup.subtree_control") or "none")
        return cls(base)

    def job_dir(self, job_id: str, attempt: int) -> Path:
        return self.base / f"{job_id}-{attempt}"

    def make(self, job_id: str, attempt: int, cpu_millis: int, memory_bytes: int) -> Path:
        """The job's cgroup, made with its limits; OSError when it cannot be made."""
        d = self.job_dir(job_id, attempt)
        d.mkdir(exist_ok=True)
        applied = []
        if cpu_millis > 0 and _write(d / "cpu.max", f"{cpu_millis * CPU_PERIOD_US // 1000} {CPU_PERIOD_US}"):
            applied.append(f"cpu.max={cpu_millis}m")
        if memory_bytes > 0 and _write(d / "memory.max", str(memory_bytes)):
            _write(d / "memory.swap.max", "0")
            applied.append(f"memory.max={memory_bytes}")
        wanted = (cpu_millis > 0) + (memory_bytes > 0)
        event(log, "cgroups.job", logging.INFO if len(applied) == wanted else logging.WARNING, job_id=job_id,
              attempt=attempt, cgroup=str(d), limits=",".join(applied) or "none",
              detail="" if len(applied) == wanted else "a limit's controller is not delegated to the agent")
        return d

    def wrapper_env(self, job_id: str, attempt: int) -> dict[str, str]:
        return {ENV_CGROUP: str(self.job_dir(job_id, attempt)), ENV_PARK: str(self.base / PARK)}

    def kill(self, job_id: str, attempt: int) -> None:
        kill_all(self.job_dir(job_id, attempt))

    def remove(self, job_id: str, attempt: int) -> None:
        d = self.job_dir(job_id, attempt)
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # something still lives there: kill it, try once more
                kill_all(d)
                try:
                    d.rmdir()
                except OSError:
                    pass


    def tidy(self) -> None:
        """Remove the empty cgroups of ended jobs and, when none is left, the agent's own (rmdir only
        ever removes an empty cgroup: a job still running keeps its own and the agent's)."""
        try:
            children = [p for p in self.base.iterdir() if p.is_dir()]
        except OSError:
            return
        for d in [*children, self.base]:
            try:
                d.rmdir()
            except OSError:
                pass


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def kill_all(cgroup: Path, timeout: float = 5.0) -> None:
    """SIGKILL every process in `cgroup` (cgroup.kill where the kernel has it, else one by one)."""
    if not cgroup.is_dir():
        return
    if _write(cgroup / "cgroup.kill", "1"):
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = [int(p) for p in _read(cgroup / "cgroup.procs").split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
