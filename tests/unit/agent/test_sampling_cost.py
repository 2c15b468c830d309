"""The GPU sampling loop makes only NVML's cheap per-device reads (issue 15): PCIe throughput and the
total-energy counter cost 3-21 ms each on an H100 and stay off it (energy is integrated from the
power reading instead, agent/accounting.py)."""
from __future__ import annotations

from typing import Any

from gpufleet.agent.gpus import GpuMonitor, NvmlGpus

from tests.unit.agent.test_gpus import two_gpus

SLOW = ("nvmlDeviceGetPcieThroughput", "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetSamples", "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetAccountingStats")


class Recording:
    """The fake pynvml, noting every function the agent looks up on it."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self.looked_up: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml"):
            self.looked_up.append(name)
        return getattr(self._nvml, name)


def test_a_sample_makes_no_slow_nvml_call() -> None:
    nvml = Recording(two_gpus())
    source = NvmlGpus(nvml=nvml)
    monitor = GpuMonitor(source, interval=60)
    monitor.held = lambda: {0: "job-a"}
    before = len(nvml.looked_up)
    for _ in range(3):
        monitor.refresh()
    per_sample = set(nvml.looked_up[before:])
    assert per_sample and not per_sample & set(SLOW), per_sample & set(SLOW)
    assert "nvmlDeviceGetPowerUsage" in per_sample  # what energy is integrated from
    u = monitor.accounting.usage("job-a")
    assert u is not None and u.samples == 3
    source.close()
