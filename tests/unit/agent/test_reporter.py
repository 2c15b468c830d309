"""The agent's outbox pusher (agent/reporter.py) over a real store, against a fake Fleet stub:
entries in sequence order, metric rows in bounded pages, the ack stored and never moved back, a
failed call replayed from the last ack, acknowledged attempts dropped."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gpufleet.agent.reporter import MAX_CALL_BYTES, PAGE_ROWS, Reporter
from gpufleet.agent.states import JobState
from gpufleet.agent.store import JobRecord, Store

from gpufleet.v1 import coordinator_pb2 as cpb


class FakeSup:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dropped: list[tuple[str, int]] = []

    def events_after(self, seq: int, timeout: float) -> list[Any]:
        return self.store.events_after(seq)

    def acknowledge(self, job_id: str, attempt: int) -> bool:
        self.dropped.append((job_id, attempt))
        return self.store.drop(job_id, attempt)


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "down"


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[cpb.ReportRequest] = []
        self.fail = 0

    def Report(self, request: cpb.ReportRequest, timeout: float) -> cpb.ReportResponse:  # noqa: N802
        if self.fail:
            self.fail -= 1
            raise Unavailable()
        assert request.ByteSize() <= MAX_CALL_BYTES + 200_000
        self.calls.append(request)
        acked = max((r.seq for r in request.reports if r.kind != "metrics"), default=0)
        ended = [cpb.JobDigest(job_id=r.job.job_id, attempt=r.job.attempt) for r in request.reports
                 if r.kind == "ended"]
        return cpb.ReportResponse(acked_seq=acked, acknowledged=ended)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


def reporter(store: Store, stub: FakeStub) -> tuple[Reporter, FakeSup]:
    sup = FakeSup(store)
    return Reporter(sup, lambda: stub, lambda: "n1", lambda: True, lambda: None), sup


def ended_job(store: Store, job_id: str, rows: int) -> None:
    store.insert(JobRecord(job_id=job_id, attempt=1, state=JobState.PENDING, spec={"output_dir": job_id},
                           gpu_indices=[], runtime="process", created_at=1.0))
    job = store.get(job_id, 1)
    job, _ = store.update(job, state=JobState.RUNNING, runtime_id="1", started_at=2.0)
    metrics = [{"split": "train", "epoch": e, "values": {"loss": 1.0 / e, "lr": 0.001}} for e in range(1, rows + 1)]
    store.update(job, state=JobState.SUCCEEDED, exit_code=0, finished_at=3.0, log_tail=b"bye\n",
                 probe={"completed": True, "reason": "ok", "metrics": metrics})


def push_all(r: Reporter, store: Store) -> None:
    while True:
        acked = store.reported_seq()
        evs = store.events_after(acked)
        if not evs:
            return
        r.push(acked, evs)


def test_one_ended_job_with_many_rows_goes_in_pages_then_is_acked_and_dropped(store: Store) -> None:
    stub = FakeStub()
    r, sup = reporter(store, stub)
    ended_job(store, "j1", 2 * PAGE_ROWS + 5)
    push_all(r, store)
    entries = [e for call in stub.calls for e in call.reports]
    kinds = [e.kind for e in entries]
    assert kinds == ["metrics", "metrics", "metrics", "ended"]
    assert [len(e.metrics) for e in entries[:3]] == [PAGE_ROWS, PAGE_ROWS, 5]
    end = entries[-1]
    assert end.metric_rows == 2 * PAGE_ROWS + 5 and end.job.exit_code == 0 and end.job.log_tail == b"bye\n"
    assert not end.job.probe.metrics  # the rows travelled in the pages only
    assert store.reported_seq() == store.last_seq()
    assert sup.dropped == [("j1", 1)] and store.find("j1", 1) is None


def test_a_failed_call_is_replayed_from_the_last_ack(store: Store) -> None:
    stub = FakeStub()
    r, _ = reporter(store, stub)
    ended_job(store, "j1", 3)
    stub.fail = 1
    with pytest.raises(grpc.RpcError):
        push_all(r, store)
    assert store.reported_seq() == 0 and not stub.calls
    push_all(r, store)
    assert [e.kind for e in stub.calls[0].reports] == ["metrics", "ended"]
    assert store.reported_seq() == store.last_seq()


def test_the_ack_never_moves_back(store: Store) -> None:
    store.set_reported_seq(10)
    store.set_reported_seq(4)
    assert store.reported_seq() == 10


def test_many_jobs_are_batched_into_bounded_calls(store: Store) -> None:
    stub = FakeStub()
    r, _ = reporter(store, stub)
    for i in range(30):
        ended_job(store, f"j{i}", PAGE_ROWS)
    push_all(r, store)
    assert len(stub.calls) > 1 and all(c.ByteSize() <= MAX_CALL_BYTES + 200_000 for c in stub.calls)
    ended = [e.job.job_id for c in stub.calls for e in c.reports if e.kind == "ended"]
    assert sorted(ended) == sorted(f"j{i}" for i in range(30))
