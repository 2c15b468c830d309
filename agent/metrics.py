"""The agent's Prometheus collector: GPU gauges named after DCGM exporter fields, jobs, loop health.

Invariants:
- A scrape never calls NVML: GPU numbers come from `GpuMonitor.latest()` (the monitor thread's last
  sample); before the monitor's first successful sample there are no GPU series, not a driver call.
- Every GPU series carries the job that holds the GPU (`job_id`, `attempt`; empty strings when free),
  read from the store's `gpu_holds` table, the agent's own assignment table (dcgm-exporter #342: GPU
  metrics that lose their job labels). The label set is the same whether the GPU is free or held, so
  a series only changes its label values, never its label names. If the store cannot be read, the
  last hold table read is used and `gpufleet_agent_store_up` is 0.
- A scrape reads the store through its own read-only SQLite connection (WAL: readers never block the
  writer) with two small queries, holds and counts in one snapshot; it never takes the store's lock,
  so a scrape cannot delay the supervisor. Stores without a file (test fakes) are read through
  `gpu_holds()` and `jobs()`.
- Names, units and label names follow dcgm-exporter (`gpu`, `UUID`, `device`, `modelName`,
  `Hostname`): FB in MiB, power in W, temperature in C, utilisation in percent.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpufleet.agent.states import JobState
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.metrics")

MIB = 1024 * 1024
GPU_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "job_id", "attempt"]

# (metric name, help, value of a GpuSample). The ECC count is NVML's volatile uncorrected total,
# which is what DCGM_FI_DEV_ECC_DBE_VOL_TOTAL reports; exposed as a gauge (as the other fields) since
# prometheus_client would append _total to a counter's name and break the DCGM name.
DCGM_FIELDS: list[tuple[str, str, Callable[[Any], float]]] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda s: s.utilization_gpu),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda s: s.utilization_memory),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda s: s.memory_used_bytes // MIB),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
     lambda s: max(0, s.memory_total_bytes - s.memory_used_bytes) // MIB),
    ("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).", lambda s: s.memory_total_bytes // MIB),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda s: s.temperature_c),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda s: s.power_w),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "Enforced power limit (in W).", lambda s: s.power_limit_w),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit (uncorrected) volatile ECC errors.",
     lambda s: s.ecc_errors),
    ("gpufleet_gpu_healthy", "1 when the GPU is healthy and may be assigned, 0 when it is not.",
     lambda s: 1.0 if s.healthy else 0.0),
]


class AgentCollector(Collector):
    """Reads the supervisor, its store and the GPU monitor at scrape time.

    `supervisor` needs `.store` (`gpu_holds()`, `jobs()`), `.runtime_ok`, `.last_tick_ok` (monotonic)
    and optionally `.runtime.name`; `gpu_monitor` needs `latest()`, `samples_taken`, `last_error`,
    `source.kind`. Register with `registry.register(AgentCollector(sup, monitor, node_name))`.
    """

    def __init__(self, supervisor: Any, gpu_monitor: Any, hostname: str, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time) -> None:
        self.sup = supervisor
        self.monitor = gpu_monitor
        self.hostname = hostname
        self._monotonic = monotonic
        self._clock = clock
        self._holds: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._store_error = ""
        self._ro: sqlite3.Connection | None = None
        self._ro_lock = threading.Lock()

    def close(self) -> None:
        with self._ro_lock:
            if self._ro is not None:
                self._ro.close()
                self._ro = None

    def _read_sqlite(self, path: Any) -> tuple[dict[int, tuple[str, int]], dict[str, int]]:
        with self._ro_lock:
            if self._ro is None:
                uri = Path(path).resolve().as_uri() + "?mode=ro"
                self._ro = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None,
                                           timeout=5)
            db = self._ro
            db.execute("BEGIN")  # one snapshot for both reads
            try:
                holds = {int(i): (str(j), int(a)) for i, j, a in
                         db.execute("SELECT gpu_index, job_id, attempt FROM gpu_holds")}
                rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                counts = {str(s): int(n) for s, n in rows}
            finally:
                db.execute("COMMIT")
        return holds, counts

    def _read_objects(self, store: Any) -> tuple[dict[int, tuple[str, int]], dict[str, int]]:
        holds = dict(store.gpu_holds())
        counts: dict[str, int] = {}
        for job in store.jobs():
            state = getattr(job.state, "value", str(job.state))
            counts[state] = counts.get(state, 0) + 1
        return holds, counts

    def describe(self) -> Iterator[Metric]:
        # Names only (for the registry's duplicate check); never touches the store or the monitor.
        for name, doc, _ in DCGM_FIELDS:
            yield GaugeMetricFamily(name, doc, labels=GPU_LABELS)
        yield from self._agent_families()

    def _agent_families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("gpufleet_agent_jobs", "Jobs the agent holds (until acknowledged), by state.",
                              labels=["state"]),
            GaugeMetricFamily("gpufleet_agent_runtime_up",
                              "1 when the job runtime (docker engine or process) answered the last pass."),
            GaugeMetricFamily("gpufleet_agent_last_tick_age_seconds",
                              "Seconds since the supervisor's last successful observation pass."),
            GaugeMetricFamily("gpufleet_agent_store_up",
                              "1 when the agent's state store answered this scrape."),
            GaugeMetricFamily("gpufleet_gpu_sample_age_seconds",
                              "Seconds since the GPU monitor's last sample."),
            GaugeMetricFamily("gpufleet_gpu_monitor_up", "1 when the GPU monitor's last sampling succeeded."),
            GaugeMetricFamily("gpufleet_gpus", "GPUs this agent reports.", labels=["source"]),
        ]

    def _read_store(self) -> tuple[dict[int, tuple[str, int]], dict[str, int] | None]:
        store = self.sup.store
        path = getattr(store, "path", None)
        try:
            holds, found = self._read_sqlite(path) if path else self._read_objects(store)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the store does not
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if error != self._store_error:
                    event(log, "metrics.store_unreadable", logging.WARNING, error=error)
                self._store_error = error
                self.close()  # reopen next time (the file may have been replaced)
                return dict(self._holds), None
        counts = {s.value: 0 for s in JobState}
        counts.update(found)
        with self._lock:
            self._holds = holds
            self._store_error = ""
        return holds, counts

    def collect(self) -> Iterator[Metric]:
        holds, counts = self._read_store()
        taken = getattr(self.monitor, "samples_taken", 1)
        # GpuMonitor.latest() samples on the caller's thread until one sample ever succeeded: never here.
        samples, sampled_at = self.monitor.latest() if taken else ([], 0.0)

        fams = [(GaugeMetricFamily(name, doc, labels=GPU_LABELS), value) for name, doc, value in DCGM_FIELDS]
        for s in samples:
            job_id, attempt = holds.get(s.index, ("", 0))
            labels = [str(s.index), s.uuid, f"nvidia{s.index}", s.name, self.hostname, job_id,
                      str(attempt) if job_id else ""]
            for fam, value in fams:
                fam.add_metric(labels, float(value(s)))
        for fam, _ in fams:
            yield fam

        jobs, runtime_up, tick_age, store_up, sample_age, monitor_up, gpus = self._agent_families()
        if counts is not None:
            for state, n in sorted(counts.items()):
                jobs.add_metric([state], n)
        yield jobs
        runtime_up.add_metric([], 1.0 if getattr(self.sup, "runtime_ok", False) else 0.0)
        yield runtime_up
        tick_age.add_metric([], max(0.0, self._monotonic() - float(self.sup.last_tick_ok)))
        yield tick_age
        store_up.add_metric([], 0.0 if counts is None else 1.0)
        yield store_up
        if sampled_at:
            sample_age.add_metric([], max(0.0, self._clock() - sampled_at))
            yield sample_age
        monitor_up.add_metric([], 0.0 if getattr(self.monitor, "last_error", "") else 1.0)
        yield monitor_up
        source = getattr(getattr(self.monitor, "source", None), "kind", "unknown")
        gpus.add_metric([source], len(samples))
        yield gpus
        yield from self._accounting_families()
        yield from self._exclusivity_families(samples)

    def _accounting_families(self) -> Iterator[Metric]:
        """Per-job GPU usage the monitor aggregated (issue 15): the GPU-hours question per job."""
        accounting = getattr(self.monitor, "accounting", None)
        if accounting is None:
            return
        fams = [
            (GaugeMetricFamily("gpufleet_job_gpu_seconds", "GPU-seconds a job held its GPUs (summed over GPUs).",
                               labels=["job_id"]), lambda u: u.gpu_seconds),
            (GaugeMetricFamily("gpufleet_job_gpu_energy_joules", "Energy a job's GPUs drew (J).",
                               labels=["job_id"]), lambda u: u.energy_joules),
            (GaugeMetricFamily("gpufleet_job_gpu_memory_peak_bytes", "Peak memory on a job's GPUs (bytes).",
                               labels=["job_id"]), lambda u: u.peak_memory_bytes),
            (GaugeMetricFamily("gpufleet_job_gpu_utilization_mean", "Mean utilisation of a job's GPUs (%).",
                               labels=["job_id"]), lambda u: u.mean_utilization),
        ]
        for job_id, usage in sorted(accounting.snapshot().items()):
            for fam, value in fams:
                fam.add_metric([job_id], float(value(usage)))
        for fam, _ in fams:
            yield fam

    def _exclusivity_families(self, samples: list[Any]) -> Iterator[Metric]:
        fam = GaugeMetricFamily("gpufleet_gpu_processes", "Compute processes on a GPU by attribution "
                                "(job, escaped, orphan, foreign).", labels=["gpu", "kind"])
        for s in samples:
            kinds: dict[str, int] = dict.fromkeys(("job", "escaped", "orphan", "foreign"), 0)
            for p in getattr(s, "processes", ()):
                if p.kind in kinds:
                    kinds[p.kind] += 1
            for kind, n in kinds.items():
                fam.add_metric([str(s.index), kind], n)
        yield fam
        reaper = getattr(self.monitor, "reaper", None)
        if reaper is not None:
            killed = CounterMetricFamily("gpufleet_gpu_orphans_killed", "Processes of ended jobs killed for "
                                         "holding a GPU past --orphan-grace.")
            killed.add_metric([], float(getattr(reaper, "killed_total", 0)))
            yield killed
