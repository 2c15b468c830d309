"""GPU sources and the sampling thread.

NvmlGpus runs against `FakeNvml`, a stand-in for the pynvml module passed through the constructor:
CI has no GPU or libnvidia-ml, so this is the only way to drive XIDs, ECC and NVML errors.
"""
from __future__ import annotations

import ctypes
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from gpufleet.agent.gpus import (
    CRITICAL_XIDS,
    FakeGpus,
    GpuMonitor,
    GpuSample,
    NoGpus,
    NvmlGpus,
    open_gpu_source,
)

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound

GIB = 1024**3


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until true or fail at the deadline (synchronisation, not a timing assert)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not met before the deadline")
        time.sleep(0.005)


# ---- a stand-in for the pynvml module -------------------------------------------------------


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 10: "Timeout", 13: "Function Not Found", 15: "GPU is lost"}.get(
            self.value, f"NVML error {self.value}"
        )


NOT_SUPPORTED, TIMEOUT, FUNCTION_NOT_FOUND, GPU_IS_LOST, INVALID_ARGUMENT = 3, 10, 13, 15, 2


@dataclass
class FakeDevice:
    uuid: Any
    name: Any = "NVIDIA H100 80GB HBM3"
    util: tuple[int, int] = (40, 20)
    mem: tuple[int, int] = (10 * GIB, 80 * GIB)
    temp: int = 45
    power_mw: int = 250_000
    limit_mw: int = 700_000
    ecc: int = 0
    # field name -> NVML error code raised by that read
    fail: dict[str, int] = field(default_factory=dict)
    supported_events: int = 0x8 | 0x2


class FakeNvml:
    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_TIMEOUT = TIMEOUT
    NVML_ERROR_FUNCTION_NOT_FOUND = FUNCTION_NOT_FOUND
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeDoubleBitEccError = 0x2
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, devices: list[FakeDevice], init_error: int | None = None,
                 event_set_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.event_set_error = event_set_error
        self.events: list[Any] = []
        self.wait_error: int | None = None
        self.registered: dict[int, int] = {}
        self.calls: list[str] = []

    def _dev(self, handle: Any, what: str) -> FakeDevice:
        if handle is None:
            raise FakeNVMLError(INVALID_ARGUMENT)
        dev = self.devices[handle]
        if what in dev.fail:
            raise FakeNVMLError(dev.fail[what])
        return dev

    # The handle is the device index, so tests can address events by it.
    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._dev(index, "handle")
        return index

    def nvmlDeviceGetUUID(self, handle: Any) -> Any:
        return self._dev(handle, "uuid").uuid

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return self._dev(handle, "name").name

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        gpu, memory = self._dev(handle, "utilization").util
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        used, total = self._dev(handle, "memory").mem
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._dev(handle, "temperature").temp

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._dev(handle, "power").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._dev(handle, "limit").limit_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter: int) -> int:
        assert (error_type, counter) == (self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, self.NVML_VOLATILE_ECC)
        return self._dev(handle, "ecc").ecc

    def nvmlEventSetCreate(self) -> str:
        if self.event_set_error is not None:
            raise FakeNVMLError(self.event_set_error)
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, handle: int) -> int:
        return self._dev(handle, "events").supported_events

    def nvmlDeviceRegisterEvents(self, handle: int, mask: int, event_set: str) -> None:
        self.registered[handle] = mask

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0, "sampling must never block on the event set"
        if self.wait_error is not None:
            raise FakeNVMLError(self.wait_error)
        if not self.events:
            raise FakeNVMLError(TIMEOUT)
        return self.events.pop(0)

    def nvmlEventSetFree(self, event_set: str) -> None:
        self.calls.append("free")

    def xid(self, handle: Any, xid: int) -> None:
        self.events.append(SimpleNamespace(device=handle, eventType=0x8, eventData=xid))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def two_gpus() -> FakeNvml:
    return FakeNvml([FakeDevice(uuid="GPU-aaaa"), FakeDevice(uuid=b"GPU-bbbb", name=b"NVIDIA A100")])


def by_index(samples: list[GpuSample]) -> dict[int, GpuSample]:
    return {s.index: s for s in samples}


# ---- open_gpu_source --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, kind, count",
    [("none", "none", 0), ("fake:1", "fake", 1), ("fake:64", "fake", 64), (" FAKE:3 ", "fake", 3)],
)
def test_open_gpu_source_accepts(spec: str, kind: str, count: int) -> None:
    source = open_gpu_source(spec)
    assert source.kind == kind
    assert source.real is False
    assert len(source.sample()) == count


@pytest.mark.parametrize(
    "spec",
    ["", "fake", "fake:", "fake:0", "fake:65", "fake:-1", "fake:1.5", "fake: 2", "fake:2x", "gpu", "nvml:1",
     "auto,fake:1", "fake:1000"],
)
def test_open_gpu_source_rejects(spec: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        open_gpu_source(spec)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field == "--gpus"
    assert info.value.rule == f"expected auto, none, nvml or fake:N with 1<=N<=64, got {spec!r}"


def test_auto_and_nvml_use_nvml_when_it_initialises() -> None:
    for spec in ("auto", "nvml"):
        source = open_gpu_source(spec, nvml=two_gpus())
        assert isinstance(source, NvmlGpus)
        assert (source.kind, source.real) == ("nvml", True)
        assert [s.uuid for s in source.sample()] == ["GPU-aaaa", "GPU-bbbb"]


def test_auto_without_nvml_gives_no_gpus_and_nvml_gives_a_clear_error() -> None:
    broken = FakeNvml([], init_error=12)
    source = open_gpu_source("auto", nvml=broken)
    assert isinstance(source, NoGpus)
    assert "NVML unavailable" in source.reason
    with pytest.raises(FailedPrecondition, match="--gpus nvml: NVML did not initialise"):
        open_gpu_source("nvml", nvml=broken)


def test_auto_with_a_driver_but_no_devices_gives_no_gpus() -> None:
    empty = FakeNvml([])
    source = open_gpu_source("auto", nvml=empty)
    assert isinstance(source, NoGpus)
    assert empty.calls[-1] == "shutdown"


def test_auto_on_this_machine_gives_no_gpus() -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has libnvidia-ml")
    source = open_gpu_source("auto")
    assert isinstance(source, NoGpus)
    assert (source.kind, source.real, source.sample()) == ("none", False, [])
    with pytest.raises(FailedPrecondition):
        open_gpu_source("nvml")


# ---- fake GPUs --------------------------------------------------------------------------------


def test_fake_numbers_are_plausible_and_move() -> None:
    source = FakeGpus(4, seed=7)
    source.set_held({0, 1, 2, 3})
    rounds = [source.sample() for _ in range(50)]
    for samples in rounds:
        assert [s.index for s in samples] == [0, 1, 2, 3]
        for s in samples:
            assert s.name == "Fake GPU"
            assert re.fullmatch(r"GPU-fake-\d+-[0-9a-f]{8}", s.uuid)
            assert s.uuid.startswith(f"GPU-fake-{s.index}-")
            assert 0 <= s.utilization_gpu <= 100 and 0 <= s.utilization_memory <= 100
            assert s.memory_total_bytes == 80 * GIB
            assert 0 < s.memory_used_bytes < s.memory_total_bytes
            assert 30 <= s.temperature_c <= 85
            assert 0 < s.power_w <= s.power_limit_w == 700
            assert (s.ecc_errors, s.healthy, s.health_reason) == (0, True, "")
    for index in range(4):
        series = [r[index] for r in rounds]
        assert len({s.utilization_gpu for s in series}) > 10
        assert len({s.memory_used_bytes for s in series}) > 10
        assert len({s.temperature_c for s in series}) > 5
        assert len({s.uuid for s in series}) == 1
    assert [s.uuid for s in rounds[0]] == [s.uuid for s in FakeGpus(4).sample()]


def test_idle_fake_gpus_read_idle_and_held_ones_show_load() -> None:
    source = FakeGpus(3, seed=1)
    for _ in range(20):
        for s in source.sample():
            assert (s.utilization_gpu, s.utilization_memory, s.memory_used_bytes) == (0, 0, 0)
            assert s.power_w < 80 and s.temperature_c < 40
    source.set_held({1})
    rounds = [source.sample() for _ in range(20)]
    for samples in rounds:
        idle, held = samples[0], samples[1]
        assert idle.utilization_gpu == 0 and idle.memory_used_bytes == 0 and idle.power_w < 80
        assert held.utilization_gpu >= 40 and held.memory_used_bytes > 0 and held.power_w > 200
    source.set_held(set())
    assert all(s.utilization_gpu == 0 for s in source.sample())


def test_the_monitor_tells_fake_gpus_which_are_held() -> None:
    monitor = GpuMonitor(FakeGpus(2, seed=3), interval=60)
    held: set[int] = set()
    monitor.held = lambda: held
    assert [s.utilization_gpu for s in monitor.refresh()] == [0, 0]
    held.add(0)
    first, second = monitor.refresh()
    assert first.utilization_gpu >= 40 and second.utilization_gpu == 0


def test_fake_is_deterministic_with_a_seed() -> None:
    a, b = FakeGpus(3, seed=42), FakeGpus(3, seed=42)
    assert [a.sample() for _ in range(5)] == [b.sample() for _ in range(5)]


def test_fake_count_is_checked() -> None:
    for count in (0, 65):
        with pytest.raises(InvalidArgument):
            FakeGpus(count)


def test_set_health_round_trip_through_the_monitor() -> None:
    monitor = GpuMonitor(FakeGpus(3, seed=1))
    assert monitor.indices() == monitor.healthy_indices() == {0, 1, 2}
    marked = monitor.set_health(1, False, "xid=79 (test)")
    assert (marked.index, marked.healthy, marked.health_reason) == (1, False, "xid=79 (test)")
    assert monitor.healthy_indices() == {0, 2}
    assert monitor.indices() == {0, 1, 2}
    # Still reported unhealthy on later samples, with its reason.
    assert by_index(monitor.refresh())[1].health_reason == "xid=79 (test)"
    healed = monitor.set_health(1, True)
    assert (healed.healthy, healed.health_reason) == (True, "")
    assert monitor.healthy_indices() == {0, 1, 2}


def test_fake_unhealthy_without_reason_gets_one() -> None:
    assert FakeGpus(1).set_health(0, False, "").health_reason == "marked unhealthy"


def test_set_health_errors() -> None:
    with pytest.raises(FailedPrecondition) as info:
        NoGpus().set_health(0, False, "x")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    for bad in (-1, 2, 64):
        with pytest.raises(NotFound) as not_found:
            FakeGpus(2).set_health(bad, False, "x")
        assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(FailedPrecondition):
        NvmlGpus(nvml=two_gpus()).set_health(0, False, "x")
    with pytest.raises(FailedPrecondition):
        GpuMonitor(NoGpus()).set_health(0, False)


def test_fake_is_thread_safe() -> None:
    source = FakeGpus(8, seed=3)
    errors: list[BaseException] = []

    def hammer(index: int) -> None:
        try:
            for i in range(200):
                source.sample()
                source.set_health(index, i % 2 == 1, "flip")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert all(s.healthy for s in source.sample())


# ---- monitor ----------------------------------------------------------------------------------


class CountingSource:
    kind = "fake"
    real = False

    def __init__(self) -> None:
        self.calls = 0
        self.fail_with: Exception | None = None
        self.inner = FakeGpus(2, seed=0)

    def sample(self) -> list[GpuSample]:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.sample()

    def set_health(self, index: int, healthy: bool, reason: str) -> GpuSample:
        return self.inner.set_health(index, healthy, reason)

    def close(self) -> None:
        pass


def test_monitor_samples_on_its_thread_and_readers_do_not_sample() -> None:
    source = CountingSource()
    monitor = GpuMonitor(source, interval=0.01, clock=lambda: 1234.5)
    monitor.start()
    try:
        assert source.calls >= 1  # start() sampled once
        wait_until(lambda: source.calls >= 4)
        samples, at = monitor.latest()
        assert [s.index for s in samples] == [0, 1]
        assert at == 1234.5
        assert monitor.last_error == "" and monitor.last_success > 0
    finally:
        monitor.stop()
    calls = source.calls
    monitor.latest()
    monitor.healthy_indices()
    assert source.calls == calls  # reading never samples once a sample exists


def test_latest_samples_once_when_never_sampled() -> None:
    source = CountingSource()
    monitor = GpuMonitor(source)
    assert monitor.indices() == {0, 1}
    assert monitor.latest()[1] > 0
    assert source.calls == 1


def test_stop_returns_promptly_with_a_long_interval() -> None:
    monitor = GpuMonitor(FakeGpus(1), interval=5.0)
    monitor.start()
    thread = monitor._thread
    assert thread is not None and thread.is_alive()
    stopper = threading.Thread(target=monitor.stop)
    stopper.start()
    stopper.join(timeout=1.0)
    assert not stopper.is_alive(), "stop() did not return within 1 s"
    assert not thread.is_alive()


def test_sampling_error_does_not_kill_the_monitor() -> None:
    source = CountingSource()
    monitor = GpuMonitor(source, interval=0.01)
    monitor.start()
    try:
        good, _ = monitor.latest()
        source.fail_with = RuntimeError("driver went away")
        wait_until(lambda: monitor.last_error == "RuntimeError: driver went away")
        calls = source.calls
        wait_until(lambda: source.calls > calls + 2)  # still sampling after the error
        assert monitor._thread is not None and monitor._thread.is_alive()
        assert [s.index for s in monitor.latest()[0]] == [s.index for s in good]  # last good sample kept
        with pytest.raises(RuntimeError):
            monitor.refresh()
        source.fail_with = None
        wait_until(lambda: monitor.last_error == "")
    finally:
        monitor.stop()


def test_latest_when_the_first_sample_fails() -> None:
    source = CountingSource()
    source.fail_with = RuntimeError("boom")
    monitor = GpuMonitor(source)
    assert monitor.latest() == ([], 0.0)
    assert monitor.last_error == "RuntimeError: boom"
    assert monitor.last_success == 0.0


def test_monitor_rejects_a_bad_interval() -> None:
    with pytest.raises(InvalidArgument):
        GpuMonitor(NoGpus(), interval=0)


# ---- NVML -------------------------------------------------------------------------------------


def test_nvml_reads_every_field() -> None:
    nvml = two_gpus()
    source = NvmlGpus(nvml=nvml)
    first, second = source.sample()
    assert first == GpuSample(
        index=0, uuid="GPU-aaaa", name="NVIDIA H100 80GB HBM3", utilization_gpu=40.0,
        utilization_memory=20.0, memory_used_bytes=10 * GIB, memory_total_bytes=80 * GIB,
        temperature_c=45.0, power_w=250.0, power_limit_w=700.0, ecc_errors=0, healthy=True,
    )
    assert (second.uuid, second.name) == ("GPU-bbbb", "NVIDIA A100")  # bytes from old pynvml decoded
    assert nvml.registered == {0: 0xA, 1: 0xA}
    source.close()
    source.close()
    assert nvml.calls.count("shutdown") == 1 and "free" in nvml.calls
    with pytest.raises(FailedPrecondition):
        source.sample()


def test_nvml_not_supported_field_reads_zero_and_stays_healthy() -> None:
    nvml = two_gpus()
    nvml.devices[0].fail = {"power": NOT_SUPPORTED, "ecc": NOT_SUPPORTED, "limit": FUNCTION_NOT_FOUND}
    s = NvmlGpus(nvml=nvml).sample()[0]
    assert (s.power_w, s.power_limit_w, s.ecc_errors) == (0.0, 0.0, 0)
    assert s.temperature_c == 45.0 and s.memory_total_bytes == 80 * GIB
    assert (s.healthy, s.health_reason) == (True, "")


def test_nvml_gpu_error_marks_only_that_gpu_unhealthy() -> None:
    nvml = two_gpus()
    source = NvmlGpus(nvml=nvml)
    nvml.devices[1].fail = {"memory": GPU_IS_LOST, "utilization": GPU_IS_LOST}
    samples = by_index(source.sample())
    assert samples[0].healthy
    assert not samples[1].healthy
    assert "GPU is lost" in samples[1].health_reason and "memory" in samples[1].health_reason
    nvml.devices[1].fail = {}
    assert by_index(source.sample())[1].healthy  # read errors alone carry no memory


def test_nvml_handle_failure_at_start_is_retried() -> None:
    nvml = two_gpus()
    nvml.devices[1].fail = {"handle": GPU_IS_LOST}
    source = NvmlGpus(nvml=nvml)
    broken = by_index(source.sample())[1]
    assert not broken.healthy and "handle" in broken.health_reason
    nvml.devices[1].fail = {}
    fixed = by_index(source.sample())[1]
    assert (fixed.healthy, fixed.uuid) == (True, "GPU-bbbb")


def test_nvml_critical_xid_marks_unhealthy_and_ignores_application_xids() -> None:
    nvml = two_gpus()
    source = NvmlGpus(nvml=nvml, clock=Clock())
    nvml.xid(0, 13)  # graphics engine exception: the job's fault
    nvml.xid(1, 79)  # fallen off the bus
    samples = by_index(source.sample())
    assert samples[0].healthy
    assert (samples[1].healthy, samples[1].health_reason) == (False, "xid=79")
    assert nvml.events == []
    assert {48, 63, 64, 74, 79, 92, 94, 95} <= CRITICAL_XIDS and 13 not in CRITICAL_XIDS


def test_nvml_unattributed_event_marks_every_gpu() -> None:
    nvml = two_gpus()
    source = NvmlGpus(nvml=nvml)
    nvml.xid(None, 48)
    assert [s.health_reason for s in source.sample()] == ["xid=48", "xid=48"]


def test_nvml_double_bit_ecc_event_marks_unhealthy() -> None:
    nvml = two_gpus()
    source = NvmlGpus(nvml=nvml)
    nvml.events.append(SimpleNamespace(device=0, eventType=0x2, eventData=0))
    assert by_index(source.sample())[0].health_reason == "ecc"


def test_nvml_xid_recovers_after_quiet_period() -> None:
    nvml, clock = two_gpus(), Clock()
    source = NvmlGpus(nvml=nvml, clock=clock, recover_after=300)
    nvml.xid(0, 94)
    assert not source.sample()[0].healthy
    clock.now += 200
    nvml.xid(0, 94)  # a new event restarts the quiet period
    assert not source.sample()[0].healthy
    clock.now += 299
    assert source.sample()[0].health_reason == "xid=94"
    nvml.devices[0].fail = {"memory": GPU_IS_LOST}
    clock.now += 100
    assert not source.sample()[0].healthy  # no recovery while reads fail
    nvml.devices[0].fail = {}
    s = source.sample()[0]
    assert (s.healthy, s.health_reason) == (True, "")


def test_nvml_ecc_increase_marks_unhealthy_then_recovers() -> None:
    nvml, clock = two_gpus(), Clock()
    nvml.devices[0].ecc = 3  # errors from before the agent started: baseline, not a new fault
    source = NvmlGpus(nvml=nvml, clock=clock, recover_after=300)
    first = source.sample()[0]
    assert (first.ecc_errors, first.healthy) == (3, True)
    nvml.devices[0].ecc = 5
    s = source.sample()[0]
    assert (s.ecc_errors, s.healthy, s.health_reason) == (5, False, "ecc")
    clock.now += 300
    assert source.sample()[0].healthy


def test_nvml_without_event_support_still_samples() -> None:
    nvml = two_gpus()
    nvml.event_set_error = NOT_SUPPORTED
    assert all(s.healthy for s in NvmlGpus(nvml=nvml).sample())

    nvml = two_gpus()
    nvml.devices[0].supported_events = 0
    nvml.devices[1].fail = {"events": NOT_SUPPORTED}
    source = NvmlGpus(nvml=nvml)
    assert nvml.registered == {}
    nvml.wait_error = GPU_IS_LOST  # a failing event wait is logged, not fatal
    assert all(s.healthy for s in source.sample())


def test_nvml_init_failure_is_raised_and_partial_init_shut_down() -> None:
    with pytest.raises(FakeNVMLError):
        NvmlGpus(nvml=FakeNvml([], init_error=9))
    nvml = two_gpus()

    def broken_count() -> int:
        raise FakeNVMLError(GPU_IS_LOST)

    nvml.nvmlDeviceGetCount = broken_count  # type: ignore[method-assign]
    with pytest.raises(FakeNVMLError):
        NvmlGpus(nvml=nvml)
    assert nvml.calls == ["init", "shutdown"]


def test_monitor_over_nvml_reports_xid_health() -> None:
    nvml = two_gpus()
    monitor = GpuMonitor(NvmlGpus(nvml=nvml, clock=Clock()))
    assert monitor.healthy_indices() == {0, 1}
    nvml.xid(0, 74)
    monitor.refresh()
    assert monitor.healthy_indices() == {1}
    assert monitor.indices() == {0, 1}
