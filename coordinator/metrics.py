"""The coordinator's Prometheus collector: queue depth, jobs and nodes by state, placements, reconciling.

Invariants:
- A scrape costs two read-only aggregate queries (jobs GROUP BY status, which also gives the queue
  depth, over the `ix_jobs_queue` index that starts with status; nodes GROUP BY state), run in a
  DEFERRED transaction on SQLite so a scrape never takes the one writer lock.
- A database that does not answer makes `gpufleet_coordinator_db_up` 0 and leaves the database
  series out of that scrape; the in-memory counters are still served.
- Counters come from the objects that own them (`Scheduler.placements`, `Reconciler.actions`), so
  the numbers seen here are the ones the loops keep; they restart at 0 with the process, as
  Prometheus counters may.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from gpufleet.coordinator.db import schema
from gpufleet.coordinator.db.engine import SQLITE_BEGIN_OPTION
from gpufleet.coordinator.states import JobStatus, NodeState
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.metrics")

# One scheduling pass that placed at least one job: claim + choose + commit + Agent.Launch of the batch.
PLACEMENT_SECONDS = Histogram(
    "gpufleet_placement_duration_seconds",
    "Wall time of a scheduling pass that placed jobs (claim, choose, commit, launch on the agents).",
    registry=None,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
             float("inf")),
)
# Per placed job: from the attempt's creation (queued) to its assignment to a node.
QUEUE_WAIT_SECONDS = Histogram(
    "gpufleet_queue_wait_seconds",
    "Seconds a job attempt waited in the queue before it was placed on a node.",
    registry=None,
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0,
             float("inf")),
)

# Every attempt that ended, by status and reason code (what an operator asks first after a bad night:
# how many jobs were lost with their node, how many failed on their own).
JOBS_ENDED = Counter(
    "gpufleet_jobs_ended",
    "Job attempts ended, by status and reason code (the code that opens error_message; ok when none).",
    ["status", "reason"],
    registry=None,
)
_REASON_CODE = re.compile(r"[A-Z][A-Z_]{1,63}")


def job_ended(status: str, message: str) -> None:
    code = (message or "").split(":", 1)[0].strip()
    reason = "ok" if not code else code if _REASON_CODE.fullmatch(code) else "OTHER"
    JOBS_ENDED.labels(status, reason).inc()


def _copy(d: dict[str, int]) -> dict[str, int]:
    # The reconciler's worker threads add keys while we read; dict.copy() is atomic in CPython, but
    # be safe on other interpreters.
    for _ in range(3):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}


class CoordinatorCollector(Collector):
    """Register with `registry.register(CoordinatorCollector(engine, scheduler, reconciler, fleet))`.

    `scheduler` needs `.placements` (int) and `.last_ok`; `reconciler` `.actions` (dict action -> n) and
    `.last_ok`; `fleet` `.fresh_nodes()` and `.last_ok` (all monotonic seconds). Any may be None.
    The module histograms PLACEMENT_SECONDS and QUEUE_WAIT_SECONDS and the counter JOBS_ENDED are
    served through this collector.
    """

    def __init__(self, engine: Any, scheduler: Any = None, reconciler: Any = None, fleet: Any = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        # DEFERRED: on SQLite a scrape reads without queueing for the writer lock (BEGIN IMMEDIATE).
        deferred = {SQLITE_BEGIN_OPTION: "DEFERRED"}
        self.engine = None if engine is None else engine.execution_options(**deferred)
        self.scheduler = scheduler
        self.reconciler = reconciler
        self.fleet = fleet
        self._monotonic = monotonic
        self._error = ""
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        # Names only (for the registry's duplicate check); no database access.
        yield from self._db_families()
        yield from self._memory_families()
        yield from PLACEMENT_SECONDS.describe()
        yield from QUEUE_WAIT_SECONDS.describe()
        yield from JOBS_ENDED.describe()

    @staticmethod
    def _db_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("gpufleet_queue_depth", "Jobs QUEUED, waiting for a node."),
            GaugeMetricFamily("gpufleet_jobs", "Job attempts in the database, by status.", labels=["status"]),
            GaugeMetricFamily("gpufleet_nodes", "Registered nodes, by state.", labels=["state"]),
        )

    @staticmethod
    def _memory_families() -> tuple[Any, ...]:
        return (
            GaugeMetricFamily("gpufleet_coordinator_db_up", "1 when the database answered this scrape."),
            CounterMetricFamily("gpufleet_placements", "Jobs placed on a node (Agent.Launch attempted)."),
            CounterMetricFamily("gpufleet_reconcile_actions", "Reconcile decisions applied, by action "
                                "(keep, relaunch, stop, probe, finish).", labels=["action"]),
            GaugeMetricFamily("gpufleet_nodes_heartbeating", "Nodes whose heartbeat is fresh."),
            GaugeMetricFamily("gpufleet_loop_last_ok_age_seconds",
                              "Seconds since a coordinator loop last finished a pass.", labels=["loop"]),
        )

    def _query(self) -> tuple[dict[str, int], dict[str, int]] | None:
        if self.engine is None:
            return None
        try:
            with self.engine.connect() as conn:
                jobs = dict(conn.execute(
                    sa.select(schema.jobs.c.status, sa.func.count()).group_by(schema.jobs.c.status)).all())
                nodes = dict(conn.execute(
                    sa.select(schema.nodes.c.state, sa.func.count()).group_by(schema.nodes.c.state)).all())
        except Exception as exc:  # noqa: BLE001 - a scrape must answer while the database is down
            error = f"{type(exc).__name__}: {exc}"[:500]
            with self._lock:
                if error != self._error:
                    event(log, "metrics.db_unreadable", logging.WARNING, error=error)
                self._error = error
            return None
        with self._lock:
            self._error = ""
        return jobs, nodes

    def collect(self) -> Iterator[Metric]:
        result = self._query()
        queue, jobs_fam, nodes_fam = self._db_families()
        db_up, placements, actions, fresh, loops = self._memory_families()
        if result is not None:
            jobs, nodes = result
            queue.add_metric([], jobs.get(JobStatus.QUEUED.value, 0))
            for status in sorted({s.value for s in JobStatus} | set(jobs)):
                jobs_fam.add_metric([status], jobs.get(status, 0))
            for state in sorted({s.value for s in NodeState} | set(nodes)):
                nodes_fam.add_metric([state], nodes.get(state, 0))
            yield queue
            yield jobs_fam
            yield nodes_fam
        db_up.add_metric([], 0.0 if result is None else 1.0)
        yield db_up

        if self.scheduler is not None:
            placements.add_metric([], float(getattr(self.scheduler, "placements", 0)))
            yield placements
        if self.reconciler is not None:
            counts = _copy(getattr(self.reconciler, "actions", {}))
            for action in sorted(counts):
                actions.add_metric([action], float(counts[action]))
            yield actions
        if self.fleet is not None:
            try:
                fresh.add_metric([], len(self.fleet.fresh_nodes()))
                yield fresh
            except Exception:  # noqa: BLE001
                pass
        now = self._monotonic()
        loops_of = (("scheduler", self.scheduler), ("reconciler", self.reconciler), ("fleet", self.fleet))
        for name, obj in loops_of:
            last = getattr(obj, "last_ok", None)
            if isinstance(last, (int, float)):
                loops.add_metric([name], max(0.0, now - float(last)))
        yield loops
        yield from PLACEMENT_SECONDS.collect()
        yield from QUEUE_WAIT_SECONDS.collect()
        yield from JOBS_ENDED.collect()
