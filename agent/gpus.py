"""The agent's GPUs: which source `--gpus` names, and the thread that samples it.

The sources: agent/gpusource.py (the sample, the interface, none), agent/fakegpus.py (simulated),
agent/nvml.py (real). Their names are re-exported here for the callers that import them from here.

Invariants:
- NVML is called only from the `GpuMonitor` thread (and once from `start()`); RPC handlers read
  the last sample through `GpuMonitor.latest()`. `GetNode` therefore never waits on the driver.
- An unhealthy GPU (XID/ECC event, NVML error, or marked by hand on fake GPUs) reports
  `healthy=False` with a reason; the scheduler never assigns it.
- Health has a recovery path (NVIDIA k8s-device-plugin #234: one XID kept a GPU out until the
  plugin restarted): a GPU flagged by an XID or ECC event is healthy again after `recover_after`
  seconds without a new event, provided its reads succeed.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from gpufleet.agent.accounting import Accounting
from gpufleet.agent.exclusivity import Owner, judge
from gpufleet.agent.fakegpus import MAX_FAKE_GPUS, FakeGpus, fake_uuid
from gpufleet.agent.gpusource import GIB, GpuSample, GpuSource, NoGpus
from gpufleet.agent.nvml import CRITICAL_XIDS, NvmlGpus

from gpufleet.errors import FailedPrecondition, InvalidArgument
from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.gpus")

__all__ = ["CRITICAL_XIDS", "GIB", "MAX_FAKE_GPUS", "FakeGpus", "GpuMonitor", "GpuSample", "GpuSource", "NoGpus",
           "NvmlGpus", "fake_uuid", "open_gpu_source"]

_SPEC_RULE = f"expected auto, none, nvml or fake:N with 1<=N<={MAX_FAKE_GPUS}, got"


def open_gpu_source(spec: str, *, nvml: Any = None) -> GpuSource:
    """Build the source for `--gpus`: auto | none | nvml | fake:N (1<=N<=64).

    `auto` uses NVML when it initialises and finds a GPU, else NoGpus (reason logged); `nvml` insists.
    `nvml` (keyword) injects a pynvml stand-in for tests.
    """
    value = spec.strip().lower()
    if value == "none":
        return NoGpus("--gpus none")
    if match := re.fullmatch(r"fake:(\d{1,3})", value):
        count = int(match.group(1))
        if 1 <= count <= MAX_FAKE_GPUS:
            return FakeGpus(count)
    elif value in ("auto", "nvml"):
        try:
            source = NvmlGpus(nvml=nvml)
        except Exception as exc:  # noqa: BLE001 - NVMLError, ImportError, OSError all mean "no NVML"
            if value == "nvml":
                raise FailedPrecondition(f"--gpus nvml: NVML did not initialise: {exc}") from exc
            reason = f"NVML unavailable: {exc}"
            event(log, "gpu.none", reason=reason)
            return NoGpus(reason)
        if value == "auto" and len(source) == 0:
            # A driver without devices: behave as a CPU host (docker must not ask for GPUs).
            source.close()
            event(log, "gpu.none", reason="NVML reports no GPUs")
            return NoGpus("NVML reports no GPUs")
        return source
    raise InvalidArgument("--gpus", f"{_SPEC_RULE} {spec!r}")



class GpuMonitor:
    """Samples a GpuSource on its own thread every `interval` seconds (default 5); readers never call NVML.

    A sampling exception never kills the thread: it lands in `last_error` (logged when it changes)
    and the previous sample stays. `last_success` (monotonic) lets a health check spot a stale loop.
    """

    def __init__(
        self,
        source: GpuSource,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise InvalidArgument("interval", f"must be > 0 seconds, got {interval}")
        self.source = source
        self.interval = interval
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()  # guards the published sample
        self._sampling = threading.Lock()  # one source call at a time (thread vs refresh/set_health)
        self._samples: list[GpuSample] = []
        self._sampled_at = 0.0
        self._ever = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""
        self.last_success = 0.0
        self.last_pass = monotonic()
        self.samples_taken = 0
        # Which GPU indices jobs hold now (the supervisor's assignments); fake GPUs show load there.
        # (A dict of index -> job id also names the jobs, for per-job GPU accounting.)
        self.held: Callable[[], set[int] | dict[int, str]] | None = None
        self.accounting = Accounting()
        # The live jobs that may own GPU processes (the supervisor's records), for exclusivity;
        # --gpu-exclusivity warn keeps foreign/orphan-held GPUs offered; the reaper kills orphans.
        self.owners: Callable[[], list[Owner]] | None = None
        self.warn_only = False
        self.reaper: Any = None  # agent/orphans.py OrphanReaper

    def start(self) -> None:
        """Take a first sample here (so readers find one), then sample on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._try_sample()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; returns once it has ended (an NVML call in flight takes microseconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():
                event(log, "gpu.monitor_stuck", logging.ERROR)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._try_sample()

    def _sample(self) -> list[GpuSample]:
        with self._sampling:
            set_held = getattr(self.source, "set_held", None)
            holders: dict[int, str] = {}
            seen = self.accounting.generation()  # before the holders: see Accounting.close
            if self.held is not None:
                try:
                    held = self.held()
                    holders = dict(held) if isinstance(held, dict) else dict.fromkeys(held, "")
                    if set_held is not None:
                        set_held(set(holders))
                except Exception as exc:  # noqa: BLE001 - a load picture must not stop sampling
                    event(log, "gpu.held_unknown", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            try:
                samples = sorted(self.source.sample(), key=lambda s: s.index)
                if self.owners is not None and any(s.processes for s in samples):
                    samples = judge(samples, self.owners(), warn_only=self.warn_only)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_error:
                    event(log, "gpu.sample_failed", logging.WARNING, error=error)
                self.last_error = error
                raise
            with self._lock:
                self._samples, self._sampled_at, self._ever = samples, self._clock(), True
            self.accounting.add(samples, holders, self._monotonic(), seen)
            if self.reaper is not None:
                try:
                    self.reaper.run(samples)
                except Exception:  # noqa: BLE001 - a failed kill must not stop sampling
                    log.exception("orphan reaper failed")
            if self.last_error:
                event(log, "gpu.sample_recovered", previous_error=self.last_error)
            self.last_error = ""
            self.last_success = self._monotonic()
            self.samples_taken += 1
            return samples

    def _try_sample(self) -> None:
        try:
            self._sample()
        except Exception:  # noqa: BLE001 - recorded in last_error; the loop must survive
            pass
        # A pass completed, sampled or not: health watches for a stuck sampler, not a failing one.
        self.last_pass = self._monotonic()

    def refresh(self) -> list[GpuSample]:
        """Sample now on the caller's thread; raises what the source raised (recorded in last_error)."""
        return list(self._sample())

    def latest(self) -> tuple[list[GpuSample], float]:
        """The last sample and its wall time; ([], 0.0) if no sample ever succeeded."""
        with self._lock:
            ever = self._ever
        if not ever:
            # Only before start(): a caller that never started the monitor still gets numbers.
            self._try_sample()
        with self._lock:
            return list(self._samples), self._sampled_at

    def indices(self) -> set[int]:
        return {s.index for s in self.latest()[0]}

    def healthy_indices(self) -> set[int]:
        return {s.index for s in self.latest()[0] if s.healthy}

    def set_health(self, index: int, healthy: bool, reason: str = "") -> GpuSample:
        """Delegate to the source, then refresh so readers see the change at once."""
        sample = self.source.set_health(index, healthy, reason)
        try:
            for fresh in self._sample():
                if fresh.index == index:
                    return fresh
        except Exception:  # noqa: BLE001 - the change happened; the failed refresh is in last_error
            with self._lock:
                self._samples = [sample if s.index == index else s for s in self._samples]
        return sample
