"""Real GPUs through NVML (`pynvml`): readings, XID/ECC events and their recovery, the GPU processes.

Invariants (see also agent/gpus.py):
- `NvmlGpus.sample()` is called from the monitor thread only; RPC handlers never wait on the driver.
- An unhealthy GPU (XID/ECC event, NVML error) reports `healthy=False` with a reason; the scheduler
  never assigns it. A GPU flagged by an XID or ECC event is healthy again after `recover_after`
  seconds without a new event, provided its reads succeed (NVIDIA k8s-device-plugin #234).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpufleet.agent.exclusivity import GpuProcess
from gpufleet.agent.gpusource import GpuSample

from gpufleet.errors import FailedPrecondition
from gpufleet.log import event

log = logging.getLogger("gpufleet.agent.gpus")

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

