"""Pushes the agent's outbox to the coordinator (Fleet.Report) as it fills.

The outbox is the store's event log (agent/store.py `events`): every change of a job (recorded,
started, progress, ended with exit code, probe verdict and log tail) appends an event with a
sequence number in the same transaction as the change. This thread wakes on each new event, sends
the *current record* of every attempt those events touched (so a repeat or a late entry is
harmless, and many progress events of one job collapse into one entry), and stores the
coordinator's ack (`reported_seq`) once the answer says it applied them. After a restart or a
partition it starts again from the last ack: at least once, in order.

Why batched unary calls and not a stream: each call is one bounded unit of work with its own
deadline and its own ack, the coordinator needs no per-stream state or thread (a long-lived
stream per agent would hold one of its worker threads for ever), and a lost answer only means the
same entries are sent again. Batching keeps it cheap: one call carries every entry pending.

Metric rows travel in pages (PAGE_ROWS rows, one entry each) before their attempt's ended entry,
and a call carries at most MAX_CALL_BYTES, so no message comes near gRPC's 4 MiB limit whatever a
job wrote. The heartbeat stays liveness and GPU snapshot (plus the digests it fences by).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from gpufleet.agent import convert
from gpufleet.agent.store import Event, JobRecord

from gpufleet.log import event
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

log = logging.getLogger("gpufleet.agent.reporter")

PAGE_ROWS = 2000  # metric rows per entry: ~100 KB
MAX_CALL_BYTES = 1024 * 1024  # far below the 4 MiB default limit
EVENTS_PER_ROUND = 1000
CALL_TIMEOUT = 10.0
RETRY_S = (0.2, 0.5, 1.0, 2.0)


class Reporter:
    def __init__(self, sup: Any, stub: Callable[[], Any], node_name: Callable[[], str],
                 registered: Callable[[], bool], on_reregister: Callable[[], None]) -> None:
        self.sup = sup
        self.store = sup.store
        self._stub = stub
        self._node_name = node_name
        self._registered = registered
        self._on_reregister = on_reregister
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)
        self.last_ok = 0.0
        self.sent = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                acked = self.store.reported_seq()
                evs = self.sup.events_after(acked, timeout=1.0)
                if not evs:
                    continue
                if not self._registered():
                    self._stop.wait(0.1)
                    continue
                self.push(acked, evs)
                failures = 0
            except grpc.RpcError as exc:
                event(log, "report.failed", logging.WARNING, code=str(exc.code()), detail=exc.details())
                self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("report failed")
                self._stop.wait(RETRY_S[-1])
                failures += 1

    def push(self, acked: int, evs: list[Event]) -> None:
        """Send the records the events after `acked` touched; store each answer's ack."""
        latest: dict[tuple[str, int], Event] = {}
        for ev in evs:
            latest[(ev.job_id, ev.attempt)] = ev
        if evs[0].seq > acked + 1 and acked < self._oldest_kept():
            # Events past our ack were pruned (a very long partition): report every held attempt.
            for rec in self.store.jobs():
                latest.setdefault(rec.key, Event(evs[-1].seq, time.time(), "resync", rec.job_id, rec.attempt, {}))
        entries: list[cpb.JobReport] = []
        for ev in sorted(latest.values(), key=lambda e: e.seq):
            rec = self.store.find(ev.job_id, ev.attempt)
            if rec is None:
                continue  # acknowledged and dropped meanwhile: nothing left to tell
            entries.extend(self._entries(ev.seq, ev.kind, rec))
        if not entries:
            self.store.set_reported_seq(evs[-1].seq)
            return
        batch: list[cpb.JobReport] = []
        size = 0
        for entry in entries:
            n = entry.ByteSize()
            if batch and size + n > MAX_CALL_BYTES:
                self._send(batch)
                batch, size = [], 0
            batch.append(entry)
            size += n
        if batch:
            self._send(batch)
        # Events of attempts no longer held (dropped after an ack) are covered too.
        if self.store.reported_seq() >= max(e.seq for e in entries):
            self.store.set_reported_seq(evs[-1].seq)

    def _entries(self, seq: int, kind: str, rec: JobRecord) -> list[cpb.JobReport]:
        status = convert.job_to_pb(rec, with_metrics=False, with_log=True)
        if rec.live:
            return [cpb.JobReport(seq=seq, kind="progress" if kind == "progress" else "started", job=status)]
        rows = []
        probe = rec.probe or {}
        if isinstance(probe.get("metrics"), list):
            full = convert.probe_to_pb({"metrics": probe["metrics"]})
            rows = list(full.metrics) if full is not None else []
        head = pb.JobStatus(job_id=rec.job_id, attempt=rec.attempt, state=status.state)
        out = [cpb.JobReport(seq=seq, kind="metrics", job=head, metrics=rows[i:i + PAGE_ROWS])
               for i in range(0, len(rows), PAGE_ROWS)]
        out.append(cpb.JobReport(seq=seq, kind="ended", job=status, metric_rows=len(rows)))
        return out

    def _send(self, batch: list[cpb.JobReport]) -> None:
        r = self._stub().Report(cpb.ReportRequest(node_name=self._node_name(), reports=batch), timeout=CALL_TIMEOUT)
        if r.reregister:
            self._on_reregister()
            raise _Reregister()
        if r.acked_seq:
            self.store.set_reported_seq(r.acked_seq)
        for d in r.acknowledged:
            try:
                self.sup.acknowledge(d.job_id, d.attempt)
            except Exception as exc:  # noqa: BLE001 - unknown or live: nothing to drop
                event(log, "ack.skip", job_id=d.job_id, attempt=d.attempt, why=str(exc))
        self.sent += len(batch)
        self.last_ok = time.monotonic()

    def _oldest_kept(self) -> int:
        first = self.store.events_after(0, limit=1)
        return first[0].seq - 1 if first else self.store.last_seq()


class _Reregister(grpc.RpcError):
    """The coordinator does not know this node yet: wait for the registrar."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> str:
        return "register first"
