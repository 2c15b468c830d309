"""Agents' side of the coordinator: registration, heartbeats, fencing and silent nodes.

Silence is not death. Node liveness uses this process's monotonic clock (never wall time, which
can jump): a node is UNREACHABLE when no heartbeat arrived for --node-timeout since the later of
its last heartbeat and this coordinator's start. Nothing is stopped then: its jobs stay RUNNING,
shown "node unreachable since T", and no placement goes there. Only when a job's own lost_after
(per job or model, else --lost-after, default 300 s) passes in silence is that attempt ended
(STOPPED NODE_LOST) and, by its retry policy, requeued as a new attempt that resumes from the
latest epoch the coordinator saw, in a fresh folder. When the node is heard again its report
decides: an attempt that ended during the silence gets its true end (even after a requeue: the
replacement is then canceled or stopped, SUPERSEDED_BY_ORIGINAL); one still running continues; one
that was replaced is told to stop (fencing by attempt), so a job never runs twice.

A node is offered to the scheduler only while its own last report agrees with the database: after
Register, and while a heartbeat answer still carries attempts to stop, it is *unsettled* (its GPUs
may still be held by a fenced attempt, and a new attempt of the same job would be refused). A node
whose Launch could not be delivered is unsettled too, until it is heard from again.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gpufleet.coordinator import exclusivity
from gpufleet.coordinator.agents import row_id
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.ending import end_job
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.reports import Applied, Entry, Reports
from gpufleet.coordinator.states import DesiredState, JobStatus, NodeState, TerminationReason
from sqlalchemy.engine import Engine

from gpufleet.config import split_hostport
from gpufleet.errors import InvalidArgument, NotFound
from gpufleet.log import event
from gpufleet.loop import Loop

log = logging.getLogger("gpufleet.coordinator.fleet")

LIVE_AGENT_STATES = ("PENDING", "RUNNING")
# How long a job may stay unheard before it is requeued, unless the job or its model says (Slurm's
# SlurmdTimeout is 300 s in common configurations; Nomad's disconnect.lost_after).
DEFAULT_LOST_AFTER = 300.0


@dataclass(frozen=True)
class Digest:
    job_id: str
    attempt: int
    state: str  # agent state name


@dataclass
class HeartbeatAnswer:
    stop: list[Digest] = field(default_factory=list)
    acknowledged: list[Digest] = field(default_factory=list)
    reregister: bool = False


class Fleet:
    def __init__(self, engine: Engine, reconciler: Reconciler, wake_scheduler: Callable[[], None], *,
                 node_timeout: float = 10.0, heartbeat_interval: float = 2.0, lost_after: float = DEFAULT_LOST_AFTER,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.lost_after = lost_after
        self.reconciler = reconciler
        self.wake_scheduler = wake_scheduler
        self.node_timeout = node_timeout
        self.heartbeat_interval = heartbeat_interval
        self.mono = mono
        self.started = mono()
        self._seen: dict[str, float] = {}
        self._seen_wall: dict[str, datetime] = {}
        self._db_hb: dict[str, datetime | None] = {}  # last stored heartbeat each sweep saw
        self._heard: set[str] = set()  # nodes this process itself got a heartbeat from
        self._unsettled: set[str] = set()  # not offered to the scheduler: see the module docstring
        self._healthy: dict[str, frozenset[int]] = {}  # each node's offerable GPUs, last heartbeat
        self._lock = threading.Lock()
        self.reports = Reports(engine, reconciler, reconciler.wake_scheduler)
        self.gpu_watch = exclusivity.Watch()
        self.loop = Loop("node-sweep", lambda: bool(self.sweep()) and False, min(1.0, node_timeout / 4), mono)

    # -- liveness ------------------------------------------------------------------------------
    def _touch(self, name: str, wall: datetime | None = None) -> None:
        with self._lock:
            self._seen[name] = self.mono()
            self._seen_wall[name] = wall or datetime.now(UTC)
            self._heard.add(name)

    def _learn_from_db(self, nodes: Sequence[Any]) -> None:
        """Heartbeats another replica received: a node's stored heartbeat that changed since the last
        sweep (and is not the one this process wrote) counts as a sighting now, on this process's
        monotonic clock. No wall clocks are compared, so replicas with skewed clocks agree."""
        with self._lock:
            for n in nodes:
                hb = n.last_heartbeat
                before = self._db_hb.get(n.name)
                self._db_hb[n.name] = hb
                if hb is None or before is None or hb == before or hb == self._seen_wall.get(n.name):
                    continue
                self._seen[n.name] = self.mono()
                # Another replica answered that heartbeat (and fenced what had to be fenced).
                self._unsettled.discard(n.name)

    def fresh_nodes(self) -> set[str]:
        """Nodes the scheduler may use: last heartbeat within the timeout (by this process's monotonic
        clock), and settled."""
        now = self.mono()
        with self._lock:
            return {n for n, t in self._seen.items() if now - t <= self.node_timeout and n not in self._unsettled}

    def unreachable(self, name: str) -> None:
        """A Launch to `name` could not be delivered: place nothing more there until it heartbeats,
        so one partitioned node does not collect (and delay) every placement until it is LOST."""
        with self._lock:
            self._unsettled.add(name)
        event(log, "node.unreachable", logging.WARNING, node=name)

    def _settle(self, name: str, settled: bool) -> None:
        with self._lock:
            changed = (name in self._unsettled) == settled
            if settled:
                self._unsettled.discard(name)
            else:
                self._unsettled.add(name)
        if changed and settled:
            self.wake_scheduler()

    def silent_for(self, name: str) -> float:
        with self._lock:
            last = self._seen.get(name, self.started)
        return self.mono() - last

    # -- RPC handlers --------------------------------------------------------------------------
    def register(self, name: str, address: str, labels: dict[str, str], agent_version: str, runtime: str,
                 gpus: Sequence[dict[str, Any]]) -> float:
        if not name:
            raise InvalidArgument("node_name", "must not be empty")
        host, _ = split_hostport(address, "address")
        if not host or any(c.isspace() for c in host):
            raise InvalidArgument("address", f"expected HOST:PORT the coordinator can dial, got {address!r}")
        with self.engine.begin() as conn:
            node = repo.upsert_node(conn, name, address=address, labels=labels, agent_version=agent_version,
                                    runtime=runtime, gpus=gpus)
            repo.clear_unreachable(conn, name, actor="register")
        self._settle(name, False)  # until its first heartbeat answer fenced whatever must not run
        self._touch(name)
        event(log, "node.registered", node=name, address=address, state=node.state.value, gpus=len(gpus))
        self.wake_scheduler()
        return self.heartbeat_interval

    def heartbeat(self, name: str, gpus: Sequence[dict[str, Any]], jobs: Sequence[Digest]) -> HeartbeatAnswer:
        if not name:
            raise InvalidArgument("node_name", "must not be empty")
        now = datetime.now(UTC)
        # One transaction (one pooled connection, one pre-ping) for the snapshot and the digests'
        # rows: 50 heartbeats a second of a 100-node fleet compete with placements for the database
        # and the GIL.
        with self.engine.begin() as conn:
            state = repo.heartbeat_node(conn, name, gpus, now)
            if state is None or state is NodeState.LOST:
                return HeartbeatAnswer(reregister=True)  # Register revives it and carries the fencing
            back = repo.clear_unreachable(conn, name, actor="heartbeat", now=now)
            for reason in self.gpu_watch.heard(name, gpus):  # foreign/orphan/escaped GPU processes
                repo.record_event(conn, "node", name, None, None, reason=reason, actor="heartbeat", now=now)
            rows = repo.job_briefs(conn, [row_id(d.job_id, d.attempt) for d in jobs])
        self._touch(name, now)
        healthy = repo.healthy_indices(gpus)
        with self._lock:
            health_changed = self._healthy.get(name) != healthy
            self._healthy[name] = healthy
        if back:
            event(log, "node.reachable", node=name)
        if back or health_changed:
            # A GPU went bad (a foreign process, an XID) or came back: the scheduler's cached node
            # list must not place on it, nor wait out its cache to use it again.
            self.wake_scheduler()
        answer = HeartbeatAnswer()
        to_sync: list[str] = []
        late: list[str] = []
        acked: list[str] = []
        for d in jobs:
            row = rows.get(row_id(d.job_id, d.attempt))
            if row is None:
                continue  # not the coordinator's job (launched by hand): leave it alone
            current = row.status is JobStatus.RUNNING and row.node == name and row.attempt == d.attempt
            if d.state in LIVE_AGENT_STATES:
                if not current:
                    answer.stop.append(d)  # fencing: this attempt is not the one that should run
            elif current:
                to_sync.append(row.id)  # ended on the agent, not yet in the database
            elif row.lost_verdict and not row.acked and row.node == name and d.state in ("SUCCEEDED", "FAILED"):
                late.append(row.id)  # given up for lost, but it ended during the silence: its truth wins
            elif row.terminal:
                answer.acknowledged.append(d)
                if not row.acked:
                    acked.append(row.id)
        if acked:
            with self.engine.begin() as conn:
                repo.mark_acked(conn, acked)
        if to_sync:
            # A safety net only: the agent's Report normally told us first. Never waited for here:
            # nothing calls back into an agent from inside its heartbeat (a lost answer costs nothing,
            # the agent's outbox replays the end).
            self.reconciler.sync_soon(to_sync)
        if late:
            self.reconciler.late_truth_soon(late)
        if answer.stop:
            event(log, "node.fence", node=name, attempts=[f"{d.job_id}/{d.attempt}" for d in answer.stop])
        self._settle(name, not answer.stop)
        return answer

    def report(self, name: str, entries: Sequence[Entry]) -> Applied | None:
        """An agent's outbox entries (Fleet.Report); None when the node must register first. A
        report is a sign of life like a heartbeat."""
        if not name:
            raise InvalidArgument("node_name", "must not be empty")
        with self.engine.connect() as conn:
            try:
                node = repo.get_node(conn, name)
            except NotFound:
                return None
        if node.state is NodeState.LOST:
            return None
        self._touch(name)
        return self.reports.apply(name, entries)

    # -- the sweep -----------------------------------------------------------------------------
    @property
    def last_ok(self) -> float:
        return self.loop.last_ok

    def start(self) -> None:
        self.loop.start()

    def close(self) -> None:
        self.loop.close()

    def sweep(self) -> list[str]:
        """Mark silent nodes UNREACHABLE (nothing stopped), give up attempts whose lost_after passed,
        finish drains. Returns the nodes found silent."""
        silent_nodes: list[str] = []
        with self.engine.connect() as conn:
            nodes = repo.list_nodes(conn)
        self._learn_from_db(nodes)
        for n in nodes:
            if n.state is NodeState.LOST:
                continue  # left by an older coordinator: its jobs were stopped then
            silent = self.silent_for(n.name)
            if silent > self.node_timeout:
                silent_nodes.append(n.name)
                if n.unreachable_since is None:
                    with self.engine.begin() as conn:
                        marked = repo.mark_unreachable(conn, n.name, reason=f"no heartbeat for {silent:.0f}s",
                                                       actor="sweep")
                    if marked:
                        event(log, "node.unreachable", logging.WARNING, node=n.name, silent_s=round(silent, 1))
                        self.wake_scheduler()
                self.give_up_lost(n.name)
            elif n.state is NodeState.DRAINING:
                with self.engine.begin() as conn:
                    if not repo.jobs_on_node(conn, n.name):
                        repo.set_node_state(conn, n.name, NodeState.DRAINED, reason="no job left", actor="sweep")
        return silent_nodes

    def job_lost_after(self, job: Any) -> float:
        return float(job.lost_after_seconds) if job.lost_after_seconds is not None else self.lost_after

    def give_up_lost(self, name: str) -> list[str]:
        """End (STOPPED NODE_LOST) each attempt on a silent node whose lost_after has passed, and
        requeue it by its retry policy: a new attempt, fenced by its number, resuming from the latest
        epoch seen, in a fresh folder. Returns the ended attempts."""
        silent = self.silent_for(name)
        with self.engine.connect() as conn:
            running = [j for j in repo.jobs_on_node(conn, name) if silent > self.job_lost_after(j)]
        if not running:
            return []
        # Never heard from since this coordinator started: the old system's "inspect error at restart".
        at_restart = name not in self._heard
        reason = (TerminationReason.SERVER_RESTART_CONTAINER_INSPECT_ERROR if at_restart
                  else TerminationReason.NODE_LOST)
        event(log, "node.jobs_lost", logging.WARNING, node=name, silent_s=round(silent, 1),
              jobs=[j.id for j in running])
        for job in running:
            la = self.job_lost_after(job)

            def still_silent(conn: Any, la: float = la) -> bool:
                return self.silent_for(name) > la  # not heard from meanwhile

            # A job someone asked to stop is not brought back by its retry policy.
            end_job(self.engine, job.id, JobStatus.STOPPED,
                    reason.message(f"node {name} silent for {silent:.0f}s (lost_after {la:g}s)"), actor="sweep",
                    requeue=job.can_retry and job.desired_state is DesiredState.RUN, count_retry=True,
                    lost=True, only_if=still_silent)
        self.wake_scheduler()
        return [j.id for j in running]
