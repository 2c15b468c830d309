"""GPU accounting on the coordinator (issue 15): what each ended attempt used of its GPUs, and the
sacct question "how many GPU-hours did each user use this week".

- `record` stores an attempt's use as its agent reported it at the end (Fleet.Report or a reconcile
  pass: coordinator/ending.py calls it inside the end's transaction), with the owner and end time
  copied in. The first record stands.
- `summarize` sums the records since a time, per user, node or in all (GetUsage, `gpufleet usage`).
- `UsageCollector` serves the per-user totals on /metrics as counters: sums over stored rows, so
  they survive a coordinator restart and every replica reports the same numbers. A scrape costs one
  GROUP BY over the usage table (indexed by owner).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gpufleet.coordinator.db import tokens
from gpufleet.coordinator.db.engine import SQLITE_BEGIN_OPTION
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.db.usage import OWNER_LEN, UsageRow, UsageSum, insert_usage, sum_usage
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from gpufleet.errors import InvalidArgument
from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.usage")

BY = ("user", "node", "all")
NO_OWNER = "(none)"  # work done on a fleet without tokens, or before they were turned on
MAX_SINCE_SECONDS = 100 * 365 * 24 * 3600


def _num(value: Any, high: float = 1e18) -> float:
    """A reported figure as a finite number in [0, high] (an agent's report is input, not truth)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(max(v, 0.0), high) if math.isfinite(v) else 0.0


def record(conn: Connection, job: JobRow, usage: dict[str, Any], now: datetime | None = None) -> bool:
    """Store the attempt's reported GPU use (once); True when stored."""
    owner = tokens.job_ownership(conn, job.id).owner or NO_OWNER
    row = UsageRow(
        job_id=job.id, owner=owner[:OWNER_LEN], node=job.node or "", gpus=len(job.gpu_indices) or job.gpus,
        finished_at=job.finished_at or now or datetime.now(UTC),
        gpu_seconds=_num(usage.get("gpu_seconds")), energy_joules=_num(usage.get("energy_joules")),
        peak_memory_bytes=int(_num(usage.get("peak_memory_bytes"), 2.0**62)),
        mean_utilization=_num(usage.get("mean_utilization"), 100.0), samples=int(_num(usage.get("samples"), 2**31 - 1)),
    )
    stored = insert_usage(conn, row)
    if stored:
        event(log, "job.gpu_usage", job_id=job.id, owner=owner, gpu_seconds=row.gpu_seconds,
              energy_joules=row.energy_joules, peak_memory_bytes=row.peak_memory_bytes)
    return stored


@dataclass(frozen=True)
class Summary:
    since: datetime | None
    by: str
    rows: list[UsageSum]  # most GPU-seconds first
    total: UsageSum


def check_query(since_seconds: int, by: str) -> str:
    """The grouping to use; InvalidArgument naming the field and its rule."""
    if since_seconds < 0 or since_seconds > MAX_SINCE_SECONDS:
        raise InvalidArgument("since_seconds", f"must be 0 (all time) to {MAX_SINCE_SECONDS}, got {since_seconds}")
    by = by or "user"
    if by not in BY:
        raise InvalidArgument("by", f"must be one of {', '.join(BY)}, got {by!r}")
    return by


def summarize(conn: Connection, since_seconds: int, by: str, now: datetime | None = None) -> Summary:
    by = check_query(since_seconds, by)
    since = (now or datetime.now(UTC)) - timedelta(seconds=since_seconds) if since_seconds else None
    rows = sorted(sum_usage(conn, by, since), key=lambda r: (-r.gpu_seconds, r.key))
    return Summary(since, by, rows, _total(rows))


def _total(rows: list[UsageSum]) -> UsageSum:
    secs = sum(r.gpu_seconds for r in rows)
    util = sum(r.mean_utilization * r.gpu_seconds for r in rows) / secs if secs > 0 else 0.0
    return UsageSum("all", sum(r.jobs for r in rows), secs, sum(r.energy_joules for r in rows),
                    max((r.peak_memory_bytes for r in rows), default=0), util)


class UsageCollector(Collector):
    """Per-user GPU use on /metrics: `registry.register(UsageCollector(engine))`."""

    def __init__(self, engine: Engine | None, query: Callable[[Connection], list[UsageSum]] | None = None) -> None:
        self.engine = None if engine is None else engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        self._query = query or (lambda conn: sum_usage(conn, "user", None))
        self._lock = threading.Lock()
        self._error = ""

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("gpufleet_user_gpu_seconds", "GPU-seconds used by ended job attempts, by owner.",
                                labels=["owner"]),
            CounterMetricFamily("gpufleet_user_gpu_energy_joules", "Energy drawn by the GPUs of ended job "
                                "attempts (J), by owner.", labels=["owner"]),
            CounterMetricFamily("gpufleet_user_jobs_accounted", "Ended job attempts with a GPU usage record, "
                                "by owner.", labels=["owner"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        if self.engine is None:
            return
        try:
            with self.engine.connect() as conn:
                sums = self._query(conn)
        except Exception as exc:  # noqa: BLE001 - a scrape answers while the database is down (db_up says so)
            error = f"{type(exc).__name__}: {exc}"[:500]
            with self._lock:
                if error != self._error:
                    event(log, "metrics.usage_unreadable", logging.WARNING, error=error)
                self._error = error
            return
        with self._lock:
            self._error = ""
        secs, energy, jobs = self._families()
        for r in sorted(sums, key=lambda r: r.key):
            owner = r.key or NO_OWNER
            secs.add_metric([owner], r.gpu_seconds)
            energy.add_metric([owner], r.energy_joules)
            jobs.add_metric([owner], r.jobs)
        yield secs
        yield energy
        yield jobs
