"""Simulated GPUs (`--gpus fake:N`): plausible, seeded readings, load where jobs hold GPUs, health set
by hand, and fake GPU processes for the exclusivity and accounting checks. Tests and the demo run on
these; nothing here touches a driver."""
from __future__ import annotations

import hashlib
import random
import socket
import threading
from dataclasses import dataclass

from gpufleet.agent.exclusivity import fake_processes
from gpufleet.agent.gpusource import GIB, GpuSample

from gpufleet.errors import InvalidArgument, NotFound

MAX_FAKE_GPUS = 64


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


