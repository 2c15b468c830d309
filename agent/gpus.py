"""The agent's GPUs: where samples come from (NVML, simulated, none) and the thread that takes them.

Invariants:
- NVML is called only from the `GpuMonitor` thread (and once from `start()`); RPC handlers read
  the last sample through `GpuMonitor.latest()`. `GetNode` therefore never waits on the driver.
- An unhealthy GPU (XID/ECC event, NVML error, or marked by hand on fake GPUs) reports
  `healthy=False` with a reason; the scheduler never assigns it.
- Health has a recovery path (NVIDIA k8s-device-plugin #234: one XID kept a GPU out until the
  plugin restarted): a GPU flagged by an XID or ECC event is healthy again after `recover_after`
  seconds without a new event, provided its reads succeed.
- No protobuf here: the servicer converts `GpuSample` to `GpuInfo`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gpufleet.agent.accounting import Accounting
from gpufleet.agent.exclusivity import GpuProcess, Owner, fake_processes, judge

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound
from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.gpus")

GIB = 1024**3
MAX_FAKE_GPUS = 64

# XIDs that mean the GPU itself (not the job on it) is damaged or needs a reset. An allowlist, not
# "every XID but a few": application faults (13 graphics exception, 31 MMU page fault, 43 stopped
# processing, 45 preemptive cleanup, 68 video exception, 109 context switch timeout) come from a
# user's kernel and must not take a good GPU out of service. Unlisted XIDs are logged only.
CRITICAL_XIDS: frozenset[int] = frozenset({
    48,  # double-bit ECC error
    62,  # internal micro-controller halt
    63,  # ECC page retirement / row-remap recording event (reset wanted)
    64,  # ECC page retirement / row-remap failure
    74,  # NVLink error
    79,  # GPU has fallen off the bus
    92,  # high single-bit ECC error rate
    94,  # contained ECC error (reset wanted)
    95,  # uncontained ECC error
    119,  # GSP RPC timeout
    120,  # GSP error
})

# A storm of events must not stall a sample; the rest are read on the next round.
_MAX_EVENTS_PER_SAMPLE = 64

_SPEC_RULE = f"expected auto, none, nvml or fake:N with 1<=N<={MAX_FAKE_GPUS}, got"


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one sampling instant (mirrors gpufleet.v1.GpuInfo minus the assignment)."""

    index: int
    uuid: str
    name: str
    # Percent, 0-100.
    utilization_gpu: float
    utilization_memory: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    power_limit_w: float
    # Volatile uncorrected ECC errors.
    ecc_errors: int
    healthy: bool
    health_reason: str = ""
    # Compute processes on the GPU (NVML, or the fake-control file); attributed by exclusivity.judge.
    processes: tuple[GpuProcess, ...] = ()


class GpuSource(Protocol):
    """Where samples come from. Implementations are thread-safe."""

    kind: str  # "nvml" | "fake" | "none"
    real: bool  # True for NVML: docker then passes the GPUs with a DeviceRequest

    def sample(self) -> list[GpuSample]:
        """Read every GPU now (may call the driver: monitor thread only)."""
        ...

    def set_health(self, index: int, healthy: bool, reason: str) -> GpuSample:
        """Mark a GPU by hand; FailedPrecondition unless fake, NotFound for an unknown index."""
        ...

    def close(self) -> None: ...


class NoGpus:
    """A host without GPUs (`--gpus none`, or `auto` where NVML is absent)."""

    kind = "none"
    real = False

    def __init__(self, reason: str = "") -> None:
        # Why there are no GPUs ("--gpus none", "NVML: library not found"), for the startup log.
        self.reason = reason

    def sample(self) -> list[GpuSample]:
        return []

    def set_health(self, index: int, healthy: bool, reason: str) -> GpuSample:
        raise FailedPrecondition("set_health: this agent has no GPUs (--gpus none)")

    def close(self) -> None:
        pass


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def fake_uuid(index: int) -> str:
    # Host name in the hash: fake GPUs of two agents differ, as real ones do; stable across restarts.
    digest = hashlib.sha256(f"{socket.gethostname()}/{index}".encode()).hexdigest()[:8]
    return f"GPU-fake-{index}-{digest}"


@dataclass
class _FakeGpu:
    uuid: str
    utilization_gpu: float
    utilization_memory: float
    memory_used_bytes: int
    temperature_c: float
    power_w: float
    healthy: bool = True
    reason: str = ""


class FakeGpus:
    """N simulated GPUs with plausible numbers that random-walk between samples.

    Deterministic for a given seed. `set_health` is how tests (and operators on a test fleet) make a
    GPU unhealthy and healthy again.
    """

    kind = "fake"
    real = False
    NAME = "Fake GPU"
    MEMORY_TOTAL = 80 * GIB
    POWER_LIMIT_W = 700.0
    TEMP_RANGE = (30.0, 85.0)
    IDLE_POWER_W = 62.0
    IDLE_TEMP_C = 32.0

    def __init__(self, count: int, seed: int | None = None) -> None:
        if not 1 <= count <= MAX_FAKE_GPUS:
            raise InvalidArgument("count", f"fake GPUs must number 1 to {MAX_FAKE_GPUS}, got {count}")
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._gpus = [self._initial(i) for i in range(count)]

    def _initial(self, index: int) -> _FakeGpu:
        # Idle until a job holds it (issue 15: an idle fake GPU at 84 % and 582 W misled every test).
        return _FakeGpu(
            uuid=fake_uuid(index),
            utilization_gpu=0.0,
            utilization_memory=0.0,
            memory_used_bytes=0,
            temperature_c=self.IDLE_TEMP_C,
            power_w=self.IDLE_POWER_W,
        )

    def _step(self, gpu: _FakeGpu, busy: bool) -> None:
        rng = self._rng
        if not busy:
            gpu.utilization_gpu = gpu.utilization_memory = 0.0
            gpu.memory_used_bytes = 0
            gpu.power_w = round(self.IDLE_POWER_W + rng.uniform(-3, 3), 1)
            gpu.temperature_c = _clamp(gpu.temperature_c + 0.3 * (self.IDLE_TEMP_C - gpu.temperature_c),
                                       *self.TEMP_RANGE)
            return
        # Held by a job: load that random-walks in a training-like band.
        base = gpu.utilization_gpu if gpu.utilization_gpu >= 40 else rng.uniform(70, 95)
        gpu.utilization_gpu = _clamp(base + rng.uniform(-15, 15), 40, 100)
        # Memory bandwidth follows compute loosely, as on a training job.
        gpu.utilization_memory = _clamp(0.6 * gpu.utilization_gpu + rng.uniform(-10, 10), 0, 100)
        used = (gpu.memory_used_bytes or int(rng.uniform(8, 40) * GIB)) + rng.uniform(-2, 2) * GIB
        gpu.memory_used_bytes = int(_clamp(used, 2 * GIB, self.MEMORY_TOTAL - GIB))
        # Temperature drifts towards a load-dependent target instead of jumping.
        target = 30 + 0.5 * gpu.utilization_gpu
        temp = gpu.temperature_c + 0.3 * (target - gpu.temperature_c) + rng.uniform(-1.5, 1.5)
        gpu.temperature_c = _clamp(temp, *self.TEMP_RANGE)
        power = 70 + 6 * gpu.utilization_gpu + rng.uniform(-20, 20)
        gpu.power_w = _clamp(power, 50, self.POWER_LIMIT_W)

    def set_held(self, indices: set[int]) -> None:
        """The GPUs a job holds now: they show load on the next sample, the others read idle."""
        with self._lock:
            self._held = set(indices)

    def _sample_of(self, index: int, gpu: _FakeGpu) -> GpuSample:
        return GpuSample(
            index=index,
            uuid=gpu.uuid,
            name=self.NAME,
            utilization_gpu=round(gpu.utilization_gpu, 1),
            utilization_memory=round(gpu.utilization_memory, 1),
            memory_used_bytes=gpu.memory_used_bytes,
            memory_total_bytes=self.MEMORY_TOTAL,
            temperature_c=round(gpu.temperature_c, 1),
            power_w=round(gpu.power_w, 1),
            power_limit_w=self.POWER_LIMIT_W,
            ecc_errors=0,
            healthy=gpu.healthy,
            health_reason=gpu.reason,
            processes=fake_processes(index),
        )

    def sample(self) -> list[GpuSample]:
        with self._lock:
            out = []
            for index, gpu in enumerate(self._gpus):
                self._step(gpu, index in self._held)
                out.append(self._sample_of(index, gpu))
            return out

    def set_health(self, index: int, healthy: bool, reason: str) -> GpuSample:
        with self._lock:
            if not 0 <= index < len(self._gpus):
                raise NotFound(f"gpu index {index}: this agent has fake GPUs 0..{len(self._gpus) - 1}")
            gpu = self._gpus[index]
            gpu.healthy = healthy
            gpu.reason = "" if healthy else (reason or "marked unhealthy")
            # No random-walk step: the caller asked for a health change, not a new reading.
            return self._sample_of(index, gpu)

    def close(self) -> None:
        pass


@dataclass
class _NvmlGpu:
    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    # Volatile uncorrected ECC count at the previous sample; None until first read.
    ecc_seen: int | None = None
    # Event-driven unhealthiness ("xid=79", "ecc") and the clock time of its latest event.
    mark: str = ""
    mark_at: float = 0.0


def _text(value: Any) -> str:
    # Older pynvml returns bytes for strings.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlGpus:
    """Real GPUs through NVML (`pynvml`). Construct once; `sample()` from the monitor thread only.

    `nvml` is the pynvml module (injectable: tests pass a fake, since CI has no driver) and `clock`
    (monotonic seconds) times the XID/ECC recovery.
    """

    kind = "nvml"
    real = True

    def __init__(
        self,
        nvml: Any = None,
        recover_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        critical_xids: frozenset[int] = CRITICAL_XIDS,
    ) -> None:
        if nvml is None:
            # Imported here: a host without the package can still run --gpus none.
            nvml = importlib.import_module("pynvml")
        self._nvml = nvml
        self.recover_after = recover_after
        self._clock = clock
        self.critical_xids = critical_xids
        self._lock = threading.Lock()
        self._closed = False
        self._events: Any = None
        nvml.nvmlInit()
        try:
            self._gpus = [_NvmlGpu(i) for i in range(nvml.nvmlDeviceGetCount())]
            for gpu in self._gpus:
                self._open_handle(gpu)
            self._register_events()
        except BaseException:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            raise

    def __len__(self) -> int:
        return len(self._gpus)

    def _unsupported(self, exc: Exception) -> bool:
        # Field absent on this GPU or driver: report 0, the GPU is fine.
        value = getattr(exc, "value", None)
        return value in (self._nvml.NVML_ERROR_NOT_SUPPORTED, self._nvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def _open_handle(self, gpu: _NvmlGpu) -> str:
        """Fill handle, uuid and name; return the error text, "" on success."""
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            gpu.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            gpu.name = _text(nvml.nvmlDeviceGetName(handle))
            gpu.handle = handle
            return ""
        except nvml.NVMLError as exc:
            return f"nvml handle: {exc}"

    def _register_events(self) -> None:
        # Events are optional (not on every GPU, MIG or vGPU): failure to register only loses XIDs.
        nvml = self._nvml
        wanted = nvml.nvmlEventTypeXidCriticalError | nvml.nvmlEventTypeDoubleBitEccError
        try:
            self._events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            event(log, "gpu.events_unsupported", logging.WARNING, error=str(exc))
            return
        for gpu in self._gpus:
            if gpu.handle is None:
                continue
            try:
                mask = nvml.nvmlDeviceGetSupportedEventTypes(gpu.handle) & wanted
                if mask:
                    nvml.nvmlDeviceRegisterEvents(gpu.handle, mask, self._events)
                else:
                    event(log, "gpu.events_unsupported", logging.WARNING, index=gpu.index)
            except nvml.NVMLError as exc:
                event(log, "gpu.events_unsupported", logging.WARNING, index=gpu.index, error=str(exc))

    def _mark(self, gpu: _NvmlGpu, reason: str, now: float) -> None:
        if gpu.mark != reason:
            event(log, "gpu.unhealthy", logging.WARNING, index=gpu.index, uuid=gpu.uuid, reason=reason)
        gpu.mark, gpu.mark_at = reason, now

    def _poll_events(self, now: float) -> None:
        nvml = self._nvml
        if self._events is None:
            return
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        for _ in range(_MAX_EVENTS_PER_SAMPLE):
            try:
                # Timeout 0: take what is queued, never block the sampling loop.
                data = wait(self._events, 0)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) != nvml.NVML_ERROR_TIMEOUT:
                    event(log, "gpu.event_wait_failed", logging.WARNING, error=str(exc))
                return
            self._on_event(data, now)

    def _on_event(self, data: Any, now: float) -> None:
        nvml = self._nvml
        if data.eventType & nvml.nvmlEventTypeDoubleBitEccError:
            reason = "ecc"
        else:
            xid = int(data.eventData)
            if xid not in self.critical_xids:
                event(log, "gpu.xid_ignored", xid=xid)
                return
            reason = f"xid={xid}"
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
            targets = [gpu for gpu in self._gpus if gpu.uuid == uuid]
        except nvml.NVMLError:
            targets = []
        # An event NVML cannot attribute to a device (null handle) condemns all, as the device plugin does.
        for gpu in targets or self._gpus:
            self._mark(gpu, reason, now)

    def _read(self, gpu: _NvmlGpu, now: float) -> GpuSample:
        nvml = self._nvml
        errors: list[str] = []
        if gpu.handle is None and (err := self._open_handle(gpu)):
            errors.append(err)

        def field(name: str, read: Callable[[], Any]) -> Any:
            if gpu.handle is None:
                return None
            try:
                return read()
            except nvml.NVMLError as exc:
                if not self._unsupported(exc):
                    errors.append(f"nvml {name}: {exc}")
                return None

        h = gpu.handle
        util = field("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        mem = field("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        temp = field("temperature", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
        power_mw = field("power", lambda: nvml.nvmlDeviceGetPowerUsage(h))
        limit_mw = field("power limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
        ecc = field("ecc", lambda: nvml.nvmlDeviceGetTotalEccErrors(
            h, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))
        list_procs = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)  # absent in old pynvml
        procs = field("processes", lambda: list_procs(h)) if list_procs is not None else None
        ecc_errors = int(ecc or 0)
        if ecc is not None:
            # The first reading is the baseline: an agent restart must not re-flag old errors.
            if gpu.ecc_seen is not None and ecc_errors > gpu.ecc_seen:
                self._mark(gpu, "ecc", now)
            gpu.ecc_seen = ecc_errors
        if gpu.mark and not errors and now - gpu.mark_at >= self.recover_after:
            event(log, "gpu.recovered", index=gpu.index, uuid=gpu.uuid, reason=gpu.mark)
            gpu.mark = ""
        reason = "; ".join(r for r in [gpu.mark, *errors] if r)
        return GpuSample(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            utilization_gpu=float(util.gpu) if util is not None else 0.0,
            utilization_memory=float(util.memory) if util is not None else 0.0,
            memory_used_bytes=int(mem.used) if mem is not None else 0,
            memory_total_bytes=int(mem.total) if mem is not None else 0,
            temperature_c=float(temp or 0),
            power_w=(power_mw or 0) / 1000.0,
            power_limit_w=(limit_mw or 0) / 1000.0,
            ecc_errors=ecc_errors,
            healthy=not reason,
            health_reason=reason,
            processes=tuple(GpuProcess(int(p.pid), int(getattr(p, "usedGpuMemory", 0) or 0))
                            for p in procs or ()),
        )

    def sample(self) -> list[GpuSample]:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("gpu source: NVML is closed")
            now = self._clock()
            self._poll_events(now)
            return [self._read(gpu, now) for gpu in self._gpus]

    def set_health(self, index: int, healthy: bool, reason: str) -> GpuSample:
        raise FailedPrecondition("set_health: real GPU health comes from NVML; only fake GPUs can be marked")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            nvml = self._nvml
            try:
                if self._events is not None:
                    nvml.nvmlEventSetFree(self._events)
            except nvml.NVMLError as exc:
                event(log, "gpu.close_failed", logging.WARNING, error=str(exc))
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                event(log, "gpu.close_failed", logging.WARNING, error=str(exc))


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
