"""Per-job GPU accounting on the agent (issue 15): each GPU sample of a held GPU is folded into its
job's totals: peak memory, mean utilisation, energy (J = W x s) and GPU-seconds.

Fed by the GpuMonitor thread after every sample (no extra NVML call: energy is integrated from the
power reading, not read with the slow total-energy call); read by /metrics while the job runs, and
by the supervisor when the job ends, to be stored with its record and reported to the coordinator
(then `close` forgets it) (`as_record`: GPU-seconds there are the held wall time, exact whatever the sampling
interval; the sampled figures cover what this agent process saw). The interval between two
samples counts at most `max_gap` seconds, so an agent that was down does not bill the gap. At most
`max_jobs` jobs are kept (oldest dropped first).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobGpuUsage:
    samples: int = 0
    utilization_sum: float = 0.0
    peak_memory_bytes: int = 0
    energy_joules: float = 0.0
    gpu_seconds: float = 0.0
    _last: dict[int, float] = field(default_factory=dict)  # gpu index -> time of its last sample

    @property
    def mean_utilization(self) -> float:
        return self.utilization_sum / self.samples if self.samples else 0.0


class Accounting:
    def __init__(self, max_gap: float = 60.0, max_jobs: int = 512) -> None:
        self.max_gap = max_gap
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, JobGpuUsage] = OrderedDict()
        self._generation = 0
        self._closed: OrderedDict[str, int] = OrderedDict()  # job id -> generation it was closed at

    def add(self, samples: list[Any], holders: dict[int, str], now: float, seen: int | None = None) -> None:
        """Fold `samples` into the totals of the jobs `holders` names (gpu index -> job id); `seen`:
        the generation read before the holders were."""
        with self._lock:
            for s in samples:
                job_id = holders.get(s.index)
                if not job_id:
                    continue
                closed = self._closed.get(job_id)
                if closed is not None:
                    if seen is not None and seen < closed:
                        continue  # holders read before the job ended: a stale picture
                    del self._closed[job_id]  # read after: a new attempt of the same job
                u = self._jobs.get(job_id)
                if u is None:
                    u = self._jobs[job_id] = JobGpuUsage()
                    while len(self._jobs) > self.max_jobs:
                        self._jobs.popitem(last=False)
                u.samples += 1
                u.utilization_sum += s.utilization_gpu
                u.peak_memory_bytes = max(u.peak_memory_bytes, s.memory_used_bytes)
                last = u._last.get(s.index)
                if last is not None and now > last:
                    dt = min(now - last, self.max_gap)
                    u.gpu_seconds += dt
                    u.energy_joules += s.power_w * dt
                u._last[s.index] = now

    def usage(self, job_id: str) -> JobGpuUsage | None:
        with self._lock:
            return self._jobs.get(job_id)

    def generation(self) -> int:
        """Read before the holders a sample is added with (`add(..., seen=...)`)."""
        with self._lock:
            return self._generation

    def close(self, job_id: str) -> None:
        """The job's attempt ended and its GPUs are released: forget its usage, and ignore samples
        whose holders were read before now (a sample in flight would otherwise revive it)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._generation += 1
            self._closed[job_id] = self._generation
            self._closed.move_to_end(job_id)
            while len(self._closed) > self.max_jobs:
                self._closed.popitem(last=False)

    def snapshot(self) -> dict[str, JobGpuUsage]:
        with self._lock:
            return dict(self._jobs)


def as_record(usage: JobGpuUsage | None, gpus: int, started_at: float | None,
              finished_at: float | None) -> dict[str, Any]:
    """What is stored with an ended attempt and reported (proto GpuUsage): GPU-seconds from the held
    wall time (a job shorter than one sampling interval still counts), the rest from the samples."""
    held = max(0.0, (finished_at or 0.0) - started_at) if started_at is not None else 0.0
    u = usage or JobGpuUsage()
    return {"gpu_seconds": round(held * gpus, 3), "energy_joules": round(u.energy_joules, 3),
            "peak_memory_bytes": int(u.peak_memory_bytes), "mean_utilization": round(u.mean_utilization, 2),
            "samples": int(u.samples)}
