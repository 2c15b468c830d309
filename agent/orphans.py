"""Orphans of ended jobs are killed after a grace period (issue 15).

An orphan (agent/exclusivity.py) is a process still on a GPU whose environment names a job of this
agent that is no longer live: a daemon the trainer forked, a dataloader worker that outlived its
parent. It holds GPU memory nobody will free, so the GPU is kept from the scheduler; once the same
pid has been seen as an orphan for `grace` seconds it gets SIGKILL.

Before the kill the pid is checked again (its environment must still name the same job and
attempt), so a pid reused by an unrelated process in between is never killed. `grace` 0 means
never kill: the orphan is only reported. Runs after each GPU sample on the monitor's thread: it
makes no NVML call, and a kill is one syscall.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.agent.exclusivity import job_env

from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.orphans")


@dataclass(frozen=True)
class Killed:
    pid: int
    job_id: str
    gpu: int
    used_bytes: int


class OrphanReaper:
    def __init__(self, grace: float, kill: Callable[[int, int], None] = os.kill,
                 clock: Callable[[], float] = time.monotonic, proc: Path = Path("/proc")) -> None:
        if grace < 0:
            raise ValueError(f"--orphan-grace must be >= 0 seconds, got {grace}")
        self.grace = grace
        self._kill = kill
        self._clock = clock
        self._proc = proc
        self._lock = threading.Lock()
        self._first_seen: dict[tuple[int, str], float] = {}  # (pid, job id) -> monotonic time
        self.killed_total = 0

    def run(self, samples: list[Any]) -> list[Killed]:
        """Note the orphans in `samples`; kill those seen for `grace` seconds. Returns the kills."""
        now = self._clock()
        seen: dict[tuple[int, str], Killed] = {}
        for s in samples:
            for p in s.processes:
                if p.kind == "orphan":
                    seen[(p.pid, p.job_id)] = Killed(p.pid, p.job_id, s.index, p.used_bytes)
        out = []
        with self._lock:
            for key in [k for k in self._first_seen if k not in seen]:
                del self._first_seen[key]  # gone (or no longer an orphan): its clock starts again
            for key, orphan in seen.items():
                first = self._first_seen.setdefault(key, now)
                if self.grace <= 0 or now - first < self.grace:
                    continue
                if self._reap(orphan):
                    out.append(orphan)
                del self._first_seen[key]
        return out

    def _reap(self, o: Killed) -> bool:
        job_id, _ = job_env(o.pid, self._proc)
        if job_id != o.job_id:
            return False  # exited, or the pid now belongs to someone else: nothing to kill
        try:
            self._kill(o.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            event(log, "gpu.orphan_kill_failed", logging.WARNING, pid=o.pid, job_id=o.job_id, gpu=o.gpu,
                  error=str(exc))
            return False
        self.killed_total += 1
        event(log, "gpu.orphan_killed", logging.WARNING, pid=o.pid, job_id=o.job_id, gpu=o.gpu,
              used_mib=o.used_bytes // (1024 * 1024), grace_s=self.grace)
        return True
