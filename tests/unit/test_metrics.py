"""Prometheus metrics: the agent and coordinator collectors, the /metrics server, the RPC interceptor.

Collectors are read through a private registry and the text format, exactly as Prometheus sees them.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from gpufleet.agent.gpus import GIB, GpuSample
from gpufleet.agent.metrics import DCGM_FIELDS, GPU_LABELS, AgentCollector
from gpufleet.agent.states import JobState
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.engine import default_sqlite_url, make_engine, migrate
from gpufleet.coordinator.metrics import PLACEMENT_SECONDS, QUEUE_WAIT_SECONDS, CoordinatorCollector
from gpufleet.coordinator.states import JobStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.errors import InvalidArgument
from gpufleet.metrics import RpcMetricsInterceptor, new_registry, start_http, stop_http
from tests.placing import assign

# ---------------------------------------------------------------------------------------------
# helpers


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """{family name: [(sample name, labels, value)]}, parsed back from the text exposition."""
    text = generate_latest(registry).decode()
    families = text_string_to_metric_families(text)
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in families}


def one(samples: list[tuple[str, dict[str, str], float]], **labels: str) -> float:
    found = [v for _, lab, v in samples if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, f"want one sample with {labels}, got {found} of {samples}"
    return found[0]


def sample(index: int, **kw: Any) -> GpuSample:
    base: dict[str, Any] = dict(
        index=index, uuid=f"GPU-{index}", name="NVIDIA H100 80GB HBM3", utilization_gpu=50.0 + index,
        utilization_memory=20.0, memory_used_bytes=10 * GIB, memory_total_bytes=80 * GIB, temperature_c=40.0,
        power_w=300.5, power_limit_w=700.0, ecc_errors=0, healthy=True,
    )
    base.update(kw)
    return GpuSample(**base)


@dataclass
class FakeJob:
    state: JobState


@dataclass
class FakeStore:
    holds: dict[int, tuple[str, int]] = field(default_factory=dict)
    job_list: list[FakeJob] = field(default_factory=list)
    broken: bool = False

    def gpu_holds(self) -> dict[int, tuple[str, int]]:
        if self.broken:
            raise OSError("disk I/O error")
        return dict(self.holds)

    def jobs(self, states: Any = None) -> list[FakeJob]:
        if self.broken:
            raise OSError("disk I/O error")
        return list(self.job_list)


@dataclass
class FakeSupervisor:
    store: FakeStore
    runtime_ok: bool = True
    last_tick_ok: float = 100.0


@dataclass
class FakeSource:
    kind: str = "nvml"


class FakeMonitor:
    """Stands in for GpuMonitor; counts `latest()` calls so a test can prove a scrape never samples."""

    def __init__(self, samples: list[GpuSample], sampled_at: float = 1000.0, samples_taken: int = 1) -> None:
        self.samples = samples
        self.sampled_at = sampled_at
        self.samples_taken = samples_taken
        self.last_error = ""
        self.source = FakeSource()
        self.latest_calls = 0

    def latest(self) -> tuple[list[GpuSample], float]:
        self.latest_calls += 1
        return list(self.samples), self.sampled_at


def agent_registry(sup: FakeSupervisor, mon: FakeMonitor, host: str = "gpu-host-1") -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(AgentCollector(sup, mon, host, monotonic=lambda: 103.5, clock=lambda: 1002.0))
    return reg


# ---------------------------------------------------------------------------------------------
# agent collector


def test_agent_gpu_gauges_have_dcgm_names_units_and_labels() -> None:
    sup = FakeSupervisor(FakeStore())
    mon = FakeMonitor([sample(0), sample(1, memory_used_bytes=79 * GIB + 512 * 1024 * 1024, ecc_errors=3)])
    m = scrape(agent_registry(sup, mon))
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED",
                 "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "gpufleet_gpu_healthy"):
        assert name in m, name
        assert len(m[name]) == 2
        for sname, labels, _ in m[name]:
            assert sname == name  # no _total / suffix: the exact DCGM field name
            assert sorted(labels) == sorted(GPU_LABELS)
    util = m["DCGM_FI_DEV_GPU_UTIL"]
    assert one(util, gpu="0") == 50.0 and one(util, gpu="1") == 51.0
    labels = next(lab for _, lab, _ in util if lab["gpu"] == "1")
    assert labels == {"gpu": "1", "UUID": "GPU-1", "device": "nvidia1", "modelName": "NVIDIA H100 80GB HBM3",
                      "Hostname": "gpu-host-1", "job_id": "", "attempt": ""}
    # Framebuffer in MiB, as DCGM reports it.
    assert one(m["DCGM_FI_DEV_FB_USED"], gpu="0") == 10 * 1024
    assert one(m["DCGM_FI_DEV_FB_FREE"], gpu="0") == 70 * 1024
    assert one(m["DCGM_FI_DEV_FB_USED"], gpu="1") == 79 * 1024 + 512
    assert one(m["DCGM_FI_DEV_FB_TOTAL"], gpu="1") == 80 * 1024
    assert one(m["DCGM_FI_DEV_POWER_USAGE"], gpu="0") == 300.5
    assert one(m["DCGM_FI_DEV_ENFORCED_POWER_LIMIT"], gpu="0") == 700.0
    assert one(m["DCGM_FI_DEV_GPU_TEMP"], gpu="0") == 40.0
    assert one(m["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"], gpu="1") == 3
    assert one(m["gpufleet_gpus"], source="nvml") == 2
    assert one(m["gpufleet_gpu_sample_age_seconds"]) == 2.0


def test_a_held_gpu_carries_its_job_and_a_free_one_empty_labels() -> None:
    store = FakeStore(holds={1: ("job-abc", 3)}, job_list=[FakeJob(JobState.RUNNING)])
    mon = FakeMonitor([sample(0), sample(1), sample(2)])
    reg = agent_registry(FakeSupervisor(store), mon)
    m = scrape(reg)
    for name, _, _ in DCGM_FIELDS:
        assert one(m[name], gpu="1", job_id="job-abc", attempt="3") is not None
        assert one(m[name], gpu="0", job_id="", attempt="") is not None
        assert one(m[name], gpu="2", job_id="", attempt="") is not None
    # The job ends: same series names and label names, only the values of job_id/attempt change.
    store.holds.clear()
    m2 = scrape(reg)
    assert {tuple(sorted(lab)) for _, lab, _ in m2["DCGM_FI_DEV_GPU_UTIL"]} == {tuple(sorted(GPU_LABELS))}
    assert one(m2["DCGM_FI_DEV_GPU_UTIL"], gpu="1", job_id="") == 51.0


def test_job_counts_by_state_runtime_and_tick_age() -> None:
    jobs = [FakeJob(JobState.RUNNING)] * 2 + [FakeJob(JobState.SUCCEEDED), FakeJob(JobState.LOST)]
    sup = FakeSupervisor(FakeStore(job_list=jobs), runtime_ok=False, last_tick_ok=100.0)
    m = scrape(agent_registry(sup, FakeMonitor([sample(0)])))
    counts = {lab["state"]: v for _, lab, v in m["gpufleet_agent_jobs"]}
    # Every state is present (zeros included), so a dashboard's series never vanish.
    assert counts == {"PENDING": 0, "RUNNING": 2, "SUCCEEDED": 1, "FAILED": 0, "STOPPED": 0, "LOST": 1}
    assert one(m["gpufleet_agent_runtime_up"]) == 0
    assert one(m["gpufleet_agent_last_tick_age_seconds"]) == pytest.approx(3.5)
    assert one(m["gpufleet_agent_store_up"]) == 1
    assert one(m["gpufleet_gpu_healthy"], gpu="0") == 1


def test_unhealthy_gpu_reads_zero() -> None:
    mon = FakeMonitor([sample(0, healthy=False, health_reason="xid=79"), sample(1)])
    m = scrape(agent_registry(FakeSupervisor(FakeStore()), mon))
    assert one(m["gpufleet_gpu_healthy"], gpu="0") == 0
    assert one(m["gpufleet_gpu_healthy"], gpu="1") == 1


def test_scrape_never_samples_before_the_monitor_did() -> None:
    # GpuMonitor.latest() samples on the caller's thread (NVML) until a first sample succeeded.
    mon = FakeMonitor([sample(0)], samples_taken=0)
    mon.last_error = "NVMLError: Unknown Error"
    m = scrape(agent_registry(FakeSupervisor(FakeStore()), mon))
    assert mon.latest_calls == 0
    assert "DCGM_FI_DEV_GPU_UTIL" not in m or m["DCGM_FI_DEV_GPU_UTIL"] == []
    assert one(m["gpufleet_gpu_monitor_up"]) == 0
    assert one(m["gpufleet_gpus"], source="nvml") == 0


def test_store_failure_keeps_the_last_job_labels_and_says_so() -> None:
    store = FakeStore(holds={0: ("j1", 1)}, job_list=[FakeJob(JobState.RUNNING)])
    reg = agent_registry(FakeSupervisor(store), FakeMonitor([sample(0)]))
    scrape(reg)
    store.broken = True
    m = scrape(reg)
    assert one(m["gpufleet_agent_store_up"]) == 0
    assert one(m["DCGM_FI_DEV_GPU_UTIL"], gpu="0", job_id="j1", attempt="1") == 50.0
    assert m.get("gpufleet_agent_jobs", []) == []  # unknown, not zero
    store.broken = False
    assert one(scrape(reg)["gpufleet_agent_store_up"]) == 1


def test_agent_collector_with_the_real_gpu_monitor_and_store(tmp_path: Path) -> None:
    from gpufleet.agent.gpus import FakeGpus, GpuMonitor
    from gpufleet.agent.store import Store

    store = Store(tmp_path / "agent.db")
    mon = GpuMonitor(FakeGpus(2, seed=7), interval=60)
    mon.refresh()
    try:
        reg = new_registry(process=False)
        sup = FakeSupervisor(store, last_tick_ok=time.monotonic())  # type: ignore[arg-type]
        reg.register(AgentCollector(sup, mon, "h"))
        m = scrape(reg)
        assert len(m["DCGM_FI_DEV_GPU_TEMP"]) == 2
        assert one(m["gpufleet_gpus"], source="fake") == 2
        assert sum(v for _, _, v in m["gpufleet_agent_jobs"]) == 0
    finally:
        store.close()


def test_real_store_is_read_without_its_lock_in_one_snapshot(tmp_path: Path) -> None:
    from gpufleet.agent.store import JobRecord, Store

    store = Store(tmp_path / "agent.db")
    try:
        for i, gpus in enumerate(([0], [2, 3], [])):
            job = JobRecord(job_id=f"j{i}", attempt=i + 1, state=JobState.PENDING, spec={}, gpu_indices=gpus,
                            runtime="process", created_at=1.0)
            store.insert(job)
            job, _ = store.update(job, state=JobState.RUNNING, runtime_id="r")
            if i == 2:
                store.update(job, state=JobState.FAILED, finished_at=2.0, log_tail=b"x" * 65536)
        collector = AgentCollector(FakeSupervisor(store), FakeMonitor([sample(i) for i in range(4)]), "h")  # type: ignore[arg-type]
        reg = CollectorRegistry()
        reg.register(collector)
        # The supervisor holds the store's lock (a long transaction): the scrape does not wait for it.
        got: dict[str, Any] = {}
        with store._lock:
            t = threading.Thread(target=lambda: got.update(m=scrape(reg)))
            t.start()
            t.join(5)
            assert not t.is_alive(), "the scrape waited for the store's lock"
        m = got["m"]
        jobs = {lab["state"]: v for _, lab, v in m["gpufleet_agent_jobs"]}
        assert jobs["RUNNING"] == 2 and jobs["FAILED"] == 1 and jobs["PENDING"] == 0
        held = {lab["gpu"]: (lab["job_id"], lab["attempt"]) for _, lab, _ in m["DCGM_FI_DEV_GPU_UTIL"]}
        assert held == {"0": ("j0", "1"), "1": ("", ""), "2": ("j1", "2"), "3": ("j1", "2")}
        collector.close()
    finally:
        store.close()


def test_registry_rejects_a_second_collector_with_the_same_names() -> None:
    reg = CollectorRegistry()
    reg.register(AgentCollector(FakeSupervisor(FakeStore()), FakeMonitor([]), "h"))
    with pytest.raises(ValueError, match="Duplicated"):
        reg.register(AgentCollector(FakeSupervisor(FakeStore()), FakeMonitor([]), "h"))


# ---------------------------------------------------------------------------------------------
# coordinator collector


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    eng = make_engine(default_sqlite_url(tmp_path))
    migrate(eng)
    yield eng
    eng.dispose()


@dataclass
class FakeScheduler:
    placements: int = 0
    last_ok: float = 100.0


@dataclass
class FakeReconciler:
    actions: dict[str, int] = field(default_factory=dict)
    last_ok: float = 99.0


@dataclass
class FakeFleet:
    fresh: set[str] = field(default_factory=set)
    last_ok: float = 100.0

    def fresh_nodes(self) -> set[str]:
        return set(self.fresh)


def test_coordinator_queue_jobs_nodes_and_counters(engine: Any) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        ids = [repo.create_job(conn, spec={"image": "busybox"}, now=now).id for _ in range(5)]
        assign(conn, ids[0], "n1", [0], actor="test", now=now)
        for name in ("n1", "n2"):
            repo.upsert_node(conn, name, address=f"{name}:1", labels={}, agent_version="0", runtime="process",
                             gpus=[{"index": 0, "healthy": True}], now=now)
        repo.set_drain_requested(conn, "n2", True)
    sched = FakeScheduler(placements=7)
    rec = FakeReconciler(actions={"keep": 10, "relaunch": 1})
    reg = CollectorRegistry()
    reg.register(CoordinatorCollector(engine, sched, rec, FakeFleet({"n1"}), monotonic=lambda: 101.0))
    m = scrape(reg)
    assert one(m["gpufleet_queue_depth"]) == 4
    jobs = {lab["status"]: v for _, lab, v in m["gpufleet_jobs"]}
    assert jobs[JobStatus.QUEUED.value] == 4 and jobs[JobStatus.RUNNING.value] == 1
    assert set(jobs) >= {s.value for s in JobStatus}
    nodes = {lab["state"]: v for _, lab, v in m["gpufleet_nodes"]}
    assert sum(nodes.values()) == 2 and nodes["LOST"] == 0
    assert one(m["gpufleet_nodes_heartbeating"]) == 1
    assert one(m["gpufleet_coordinator_db_up"]) == 1
    assert one(m["gpufleet_placements"]) == 7  # family name; the sample is gpufleet_placements_total
    assert m["gpufleet_placements"][0][0] == "gpufleet_placements_total"
    actions = m["gpufleet_reconcile_actions"]
    assert one(actions, action="keep") == 10 and one(actions, action="relaunch") == 1
    assert all(s == "gpufleet_reconcile_actions_total" for s, _, _ in actions)
    loops = {lab["loop"]: v for _, lab, v in m["gpufleet_loop_last_ok_age_seconds"]}
    assert loops == {"scheduler": 1.0, "reconciler": 2.0, "fleet": 1.0}
    # Counters move with the objects that own them.
    sched.placements += 1
    rec.actions["stop"] = 2
    m2 = scrape(reg)
    assert one(m2["gpufleet_placements"]) == 8 and one(m2["gpufleet_reconcile_actions"], action="stop") == 2


def test_ended_jobs_are_counted_by_status_and_reason(engine: Any) -> None:
    from gpufleet.coordinator.reconciler import end_job
    from gpufleet.coordinator.states import TerminationReason

    reg = CollectorRegistry()
    reg.register(CoordinatorCollector(engine, FakeScheduler(), FakeReconciler(), None))

    def ended(status: str, reason: str) -> float:
        fam = scrape(reg).get("gpufleet_jobs_ended", [])
        return sum(v for s, lab, v in fam if s == "gpufleet_jobs_ended_total" and lab == {"status": status,
                                                                                          "reason": reason})

    before = {k: ended(*k) for k in (("STOPPED", "NODE_LOST"), ("FAILED", "EXIT_NONZERO"), ("SUCCESS", "ok"),
                                     ("STOPPED", "OTHER"))}
    outcomes = [(JobStatus.STOPPED, TerminationReason.NODE_LOST.message("node n1")),
                (JobStatus.STOPPED, TerminationReason.NODE_LOST.message("node n2")),
                (JobStatus.FAILED, TerminationReason.EXIT_NONZERO.message("exit code 3")),
                (JobStatus.SUCCESS, ""), (JobStatus.STOPPED, "something odd: no code")]
    for status, message in outcomes:
        with engine.begin() as conn:
            job = repo.create_job(conn, spec={"image": "busybox"})
            assign(conn, job.id, "n1", [0], actor="test")
        end_job(engine, job.id, status, message, actor="test", exit_code=3 if status is JobStatus.FAILED else None)
    end_job(engine, job.id, JobStatus.FAILED, "EXIT_NONZERO", actor="test")  # already ended: not counted again
    delta = {k: ended(*k) - v for k, v in before.items()}
    assert delta == {("STOPPED", "NODE_LOST"): 2, ("FAILED", "EXIT_NONZERO"): 1, ("SUCCESS", "ok"): 1,
                     ("STOPPED", "OTHER"): 1}


def test_placement_histograms_are_served_by_the_collector(engine: Any) -> None:
    reg = CollectorRegistry()
    reg.register(CoordinatorCollector(engine, FakeScheduler(), FakeReconciler(), None))
    before = scrape(reg)
    c0 = [v for s, _, v in before["gpufleet_placement_duration_seconds"] if s.endswith("_count")][0]
    PLACEMENT_SECONDS.observe(0.03)
    QUEUE_WAIT_SECONDS.observe(12.0)
    after = scrape(reg)
    c1 = [v for s, _, v in after["gpufleet_placement_duration_seconds"] if s.endswith("_count")][0]
    assert c1 == c0 + 1
    assert any(s.endswith("_bucket") for s, _, _ in after["gpufleet_queue_wait_seconds"])


def test_coordinator_scrape_answers_while_the_database_does_not(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'missing' / 'no-tables.db'}")  # never migrated: no tables
    reg = CollectorRegistry()
    reg.register(CoordinatorCollector(eng, FakeScheduler(placements=3), FakeReconciler(), None))
    m = scrape(reg)
    assert one(m["gpufleet_coordinator_db_up"]) == 0
    assert "gpufleet_queue_depth" not in m
    assert one(m["gpufleet_placements"]) == 3
    eng.dispose()


# ---------------------------------------------------------------------------------------------
# /metrics over HTTP


def test_start_http_serves_on_a_free_port_and_stops() -> None:
    reg = CollectorRegistry()
    reg.register(AgentCollector(FakeSupervisor(FakeStore()), FakeMonitor([sample(0)]), "h"))
    server, port = start_http("127.0.0.1:0", reg)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert "DCGM_FI_DEV_GPU_UTIL" in names
    finally:
        stop_http(server)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_start_http_refuses_bad_or_busy_addresses() -> None:
    reg = CollectorRegistry()
    with pytest.raises(InvalidArgument, match="--metrics-listen"):
        start_http("nonsense", reg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(InvalidArgument, match="cannot serve metrics"):
            start_http(f"127.0.0.1:{s.getsockname()[1]}", reg)


def test_new_registry_has_process_metrics_and_is_private() -> None:
    a, b = new_registry(), new_registry()
    assert a is not b
    names = {f.name for f in text_string_to_metric_families(generate_latest(a).decode())}
    assert "process_resident_memory_bytes" in names or "python_info" in names


# ---------------------------------------------------------------------------------------------
# RPC interceptor


def _handlers() -> grpc.GenericRpcHandler:
    def ident(b: bytes) -> bytes:
        return b

    def ok(req: bytes, ctx: Any) -> bytes:
        return req

    def not_found(req: bytes, ctx: Any) -> bytes:
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    def boom(req: bytes, ctx: Any) -> bytes:
        raise RuntimeError("bug")

    def set_code(req: bytes, ctx: Any) -> bytes:
        ctx.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        ctx.set_details("nope")
        return b""

    def stream(req: bytes, ctx: Any) -> Iterator[bytes]:
        for i in range(3):
            yield bytes([i])

    def stream_fail(req: bytes, ctx: Any) -> Iterator[bytes]:
        yield b"x"
        ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")

    uu = grpc.unary_unary_rpc_method_handler
    us = grpc.unary_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler("test.v1.Svc", {
        "Ok": uu(ok, ident, ident), "NotFound": uu(not_found, ident, ident), "Boom": uu(boom, ident, ident),
        "SetCode": uu(set_code, ident, ident), "Stream": us(stream, ident, ident),
        "StreamFail": us(stream_fail, ident, ident),
    })


def test_interceptor_counts_calls_by_method_and_code() -> None:
    reg = CollectorRegistry()
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[RpcMetricsInterceptor(reg, "gpufleet")])
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        def call(name: str) -> Any:
            return ch.unary_unary(f"/test.v1.Svc/{name}")

        for _ in range(3):
            assert call("Ok")(b"hi", timeout=5) == b"hi"
        for name, code in (("NotFound", grpc.StatusCode.NOT_FOUND), ("Boom", grpc.StatusCode.UNKNOWN),
                           ("SetCode", grpc.StatusCode.FAILED_PRECONDITION)):
            with pytest.raises(grpc.RpcError) as e:
                call(name)(b"", timeout=5)
            assert e.value.code() == code
        assert list(ch.unary_stream("/test.v1.Svc/Stream")(b"", timeout=5)) == [b"\0", b"\1", b"\2"]
        with pytest.raises(grpc.RpcError):
            list(ch.unary_stream("/test.v1.Svc/StreamFail")(b"", timeout=5))
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.v1.Svc/NoSuchMethod")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        ch.close()
        server.stop(None).wait()
    m = scrape(reg)
    total = m["gpufleet_rpc"]
    assert all(s == "gpufleet_rpc_total" for s, _, _ in total)
    got = {(lab["service"], lab["method"], lab["code"]): v for _, lab, v in total}
    assert got == {
        ("test.v1.Svc", "Ok", "OK"): 3,
        ("test.v1.Svc", "NotFound", "NOT_FOUND"): 1,
        ("test.v1.Svc", "Boom", "UNKNOWN"): 1,
        ("test.v1.Svc", "SetCode", "FAILED_PRECONDITION"): 1,
        ("test.v1.Svc", "Stream", "OK"): 1,
        ("test.v1.Svc", "StreamFail", "RESOURCE_EXHAUSTED"): 1,
    }
    hist = m["gpufleet_rpc_duration_seconds"]
    count = [v for s, lab, v in hist if s.endswith("_count") and lab["method"] == "Ok"]
    assert count == [3]
    inf = [v for s, lab, v in hist if s.endswith("_bucket") and lab["method"] == "Ok" and lab["le"] == "+Inf"]
    assert inf == [3]


class _Ctx:
    def code(self) -> None:
        return None


@dataclass
class _Details:
    method: str
    invocation_metadata: tuple = ()


def test_interceptor_overhead_is_under_20_microseconds_per_call() -> None:
    """What the interceptor adds to one unary call, handler lookup to return, on this machine."""
    reg = CollectorRegistry()
    icp = RpcMetricsInterceptor(reg)
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    details, ctx, n = _Details("/gpufleet.v1.Agent/GetNode"), _Ctx(), 20_000

    def bare() -> float:
        t = time.perf_counter()
        for _ in range(n):
            handler.unary_unary(b"", ctx)
        return (time.perf_counter() - t) / n

    def intercepted() -> float:
        t = time.perf_counter()
        for _ in range(n):
            icp.intercept_service(lambda d: handler, details).unary_unary(b"", ctx)
        return (time.perf_counter() - t) / n

    intercepted()  # warm the label cache
    overhead = statistics.median(intercepted() - bare() for _ in range(5))
    assert overhead < 20e-6, f"interceptor adds {overhead * 1e6:.1f} µs per call"


def test_interceptor_is_thread_safe_under_concurrent_first_use() -> None:
    reg = CollectorRegistry()
    icp = RpcMetricsInterceptor(reg)
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(500):
            icp.intercept_service(lambda d: handler, _Details(f"/s.S/M{i % 2}")).unary_unary(b"", _Ctx())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {lab["method"]: v for _, lab, v in scrape(reg)["gpufleet_rpc"]}
    assert got == {"M0": 2000, "M1": 2000}
