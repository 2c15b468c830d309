"""Per-job GPU accounting: peak memory, mean utilisation, energy and GPU-seconds from samples."""
from __future__ import annotations

import pytest
from gpufleet.agent.accounting import Accounting, as_record
from gpufleet.agent.gpus import FakeGpus, GpuMonitor, GpuSample


def s(index: int, util: float, mem: int, power: float) -> GpuSample:
    return GpuSample(index, f"GPU-{index}", "x", util, 0, mem, 100, 30, power, 700, 0, True)


def test_usage_folds_samples_of_held_gpus_only() -> None:
    acc = Accounting(max_gap=10)
    acc.add([s(0, 50, 10, 100), s(1, 90, 99, 600)], {0: "j1"}, 0.0)
    acc.add([s(0, 100, 30, 300), s(1, 90, 99, 600)], {0: "j1"}, 2.0)
    acc.add([s(0, 60, 20, 200)], {0: "j1"}, 102.0)  # a 100 s gap counts as 10 s
    u = acc.usage("j1")
    assert u is not None
    assert u.peak_memory_bytes == 30 and u.mean_utilization == pytest.approx(70)
    assert u.gpu_seconds == pytest.approx(12) and u.energy_joules == pytest.approx(300 * 2 + 200 * 10)
    assert acc.usage("nobody") is None and list(acc.snapshot()) == ["j1"]


def test_two_gpus_of_one_job_sum_and_old_jobs_are_dropped() -> None:
    acc = Accounting(max_jobs=2)
    for t in (0.0, 1.0):
        acc.add([s(0, 10, 1, 100), s(1, 30, 2, 100)], {0: "a", 1: "a"}, t)
    u = acc.usage("a")
    assert u is not None and u.gpu_seconds == pytest.approx(2) and u.energy_joules == pytest.approx(200)
    acc.add([s(0, 1, 1, 1)], {0: "b"}, 2.0)
    acc.add([s(0, 1, 1, 1)], {0: "c"}, 3.0)
    assert sorted(acc.snapshot()) == ["b", "c"]


def test_the_monitor_accounts_the_jobs_that_hold_gpus() -> None:
    now = [0.0]
    monitor = GpuMonitor(FakeGpus(2, seed=5), interval=60, monotonic=lambda: now[0])
    monitor.held = lambda: {1: "job-x"}
    for t in range(5):
        now[0] = float(t)
        monitor.refresh()
    u = monitor.accounting.usage("job-x")
    assert u is not None and u.samples == 5 and u.gpu_seconds == pytest.approx(4)
    assert u.energy_joules > 4 * 200 and u.mean_utilization >= 40 and u.peak_memory_bytes > 0


def test_an_ended_job_counts_its_held_wall_time_and_is_then_forgotten() -> None:
    acc = Accounting()
    acc.add([s(0, 80, 5 << 30, 300), s(1, 60, 7 << 30, 250)], {0: "j", 1: "j"}, 0.0)
    acc.add([s(0, 80, 5 << 30, 300), s(1, 60, 7 << 30, 250)], {0: "j", 1: "j"}, 1.0)
    rec = as_record(acc.usage("j"), gpus=2, started_at=100.0, finished_at=110.5)
    assert rec == {"gpu_seconds": 21.0, "energy_joules": 550.0, "peak_memory_bytes": 7 << 30,
                   "mean_utilization": 70.0, "samples": 4}
    before = acc.generation()
    acc.close("j")
    assert acc.usage("j") is None
    # A sample whose holders were read before the end does not bring the job back ...
    acc.add([s(0, 80, 5 << 30, 300)], {0: "j"}, 2.0, seen=before)
    assert acc.usage("j") is None
    # ... while a next attempt of the job, read after, starts from nothing.
    acc.add([s(0, 10, 1 << 30, 100)], {0: "j"}, 3.0, seen=acc.generation())
    u = acc.usage("j")
    assert u is not None and u.samples == 1 and u.peak_memory_bytes == 1 << 30
    # A job that ended before its first sample still counts its GPU time; one never started counts none.
    assert as_record(None, 1, 5.0, 7.0)["gpu_seconds"] == 2.0 and as_record(None, 1, None, 7.0)["gpu_seconds"] == 0
