"""What a GPU sample is and where samples come from: `GpuSample`, the `GpuSource` interface, and
`NoGpus` (a host without GPUs). The sources live in agent/fakegpus.py (simulated) and agent/nvml.py
(real); agent/gpus.py picks one for `--gpus` and runs the thread that samples it.
No protobuf here: the servicer converts `GpuSample` to `GpuInfo`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpufleet.agent.exclusivity import GpuProcess

from gpufleet.errors import FailedPrecondition

GIB = 1024**3


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

