"""Applies what agents push (Fleet.Report): the agent's outbox entries, in sequence order.

Every entry goes through the one way a job changes here: `reconciler.decide` judges an attempt's
end exactly as a reconcile pass would (so the reason is the same whoever learns it first), and
`reconciler.end_job` ends it in one transaction (metrics, progress, log tail, the model's steps, a
requeue). Entries carry the agent's *record* of an attempt as of their sequence number, not a
delta, so applying one twice, late, or after the reconciler already did changes nothing: a row that
is no longer RUNNING keeps its first verdict (except a lost verdict, which the node's report of a
true end replaces: `Reconciler.late_truth`).

Metric rows travel as pages (kind "metrics") before their attempt's "ended" entry; ingestion is
idempotent by (job, epoch, key), and rows that cannot be stored are dropped with a warning on the
job (`reconciler.ingest_probe`). Only database failures fail the call (the agent sends again); an
entry that cannot be applied for any other reason is logged and acknowledged, so nothing in a
report can wedge the outbox: the reconciler's periodic pass remains the safety net.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy.exc
from gpufleet.coordinator import usage
from gpufleet.coordinator.agents import Observation, row_id
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.ending import end_job, ingest_probe, start_running
from gpufleet.coordinator.reconciler import Reconciler, decide
from gpufleet.coordinator.states import JobStatus
from sqlalchemy.engine import Engine

from gpufleet import failpoints

log = logging.getLogger("gpufleet.coordinator.reports")


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str  # started | progress | ended | metrics
    job_id: str  # the agent's id (root id)
    attempt: int
    obs: Observation
    metrics: list[tuple[str, int, dict[str, float]]] = field(default_factory=list)
    metric_rows: int = 0


@dataclass
class Applied:
    acked_seq: int = 0
    acknowledged: list[tuple[str, int]] = field(default_factory=list)
    ended: int = 0


class Reports:
    def __init__(self, engine: Engine, reconciler: Reconciler, wake_scheduler: Callable[[], None],
                 actor: str = "report") -> None:
        self.engine = engine
        self.reconciler = reconciler
        self.wake_scheduler = wake_scheduler
        self.actor = actor

    def apply(self, node: str, entries: Sequence[Entry]) -> Applied:
        out = Applied()
        for e in entries:
            try:
                ended = self._one(node, e, out)
            except sqlalchemy.exc.OperationalError:
                raise  # the database is away: nothing more is acked, the agent sends again
            except Exception:  # noqa: BLE001 - one bad entry must not wedge the outbox
                log.exception("report entry failed", extra={"fields": {"node": node, "job_id": e.job_id,
                                                                       "attempt": e.attempt, "seq": e.seq}})
                ended = False
            out.ended += int(ended)
            if e.kind != "metrics":
                out.acked_seq = max(out.acked_seq, e.seq)
        if out.ended:
            self.wake_scheduler()
        return out

    def _one(self, node: str, e: Entry, out: Applied) -> bool:
        rid = row_id(e.job_id, e.attempt)
        with self.engine.connect() as conn:
            rows = repo.job_briefs(conn, [rid])
        brief = rows.get(rid)
        if brief is None or brief.node != node:
            return False  # not the coordinator's job (launched by hand), or not this node's
        if e.kind == "metrics":
            if brief.status is JobStatus.RUNNING or brief.lost_verdict:
                with self.engine.begin() as conn:
                    job = repo.get_job(conn, rid)
                    ingest_probe(conn, job, {"metrics": e.metrics})
            return False
        if brief.status is not JobStatus.RUNNING:
            if e.kind == "ended" and e.obs.gpu_usage is not None:
                # Ended here first (given up for lost, a time limit): its GPUs were used all the same.
                with self.engine.begin() as conn:
                    usage.record(conn, repo.get_job(conn, rid), e.obs.gpu_usage)
            if brief.lost_verdict and e.kind == "ended" and e.obs.state in ("SUCCEEDED", "FAILED"):
                self.reconciler.late_truth(rid, self._with_rows(e))
            if self._terminal(rid) and e.kind == "ended":
                self._ack(rid, e, out)
            return False
        with self.engine.connect() as conn:
            job = repo.get_job(conn, rid)
        if job.attempt != e.attempt:
            return False
        if e.kind != "ended":
            self._running(job, e.obs)
            return False
        d = decide(job, e.obs, startup=False)
        if d.action != "finish" or d.status is None:
            return False  # e.g. stopped while we want it running: the reconciler re-sends the stop
        probe = self._with_rows(e).probe
        failpoints.hit("coordinator.reconcile.before_apply")  # the end is known, not yet stored
        end_job(self.engine, rid, d.status, d.message, actor=self.actor, exit_code=d.exit_code, probe=probe,
                log_tail=e.obs.log_tail, progress=e.obs.progress, gpu_usage=e.obs.gpu_usage)
        self._ack(rid, e, out)
        return True

    @staticmethod
    def _with_rows(e: Entry) -> Observation:
        """The observation with its probe saying how many metric rows its pages carried (for the
        model's step*_metric_saved)."""
        if e.obs.probe is None:
            return e.obs
        return replace(e.obs, probe=dict(e.obs.probe, metric_rows=e.metric_rows))

    def _terminal(self, rid: str) -> bool:
        with self.engine.connect() as conn:
            return repo.get_job(conn, rid).terminal

    def _ack(self, rid: str, e: Entry, out: Applied) -> None:
        with self.engine.begin() as conn:
            if not repo.get_job(conn, rid).terminal:
                return
            repo.mark_acked(conn, [rid])
        out.acknowledged.append((e.job_id, e.attempt))

    def _running(self, job: Any, obs: Observation) -> None:
        """started / progress: the observed state, started_at, progress (forward only), and the
        model's step IN_PROGRESS, in one transaction."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if obs.state in ("PENDING", "RUNNING"):
                repo.set_observed_state(conn, job.id, obs.state, now)
            if obs.progress and obs.progress.get("current_epoch"):
                p = obs.progress
                repo.upsert_progress(conn, job.id, p["current_epoch"], p["total_epoch"], p["metrics"], now)
            if obs.state == "RUNNING":
                start_running(conn, job, self.actor)


__all__ = ["Applied", "Entry", "Reports"]
