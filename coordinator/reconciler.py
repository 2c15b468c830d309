"""Keeps the database true to what the agents see (the rules of the system this replaces).

`decide(job, observation, ...)` is pure and covered by a table test; `Reconciler` observes
(Agent.Inspect, outside any transaction), decides, and applies each decision in one transaction
through `end_job` (coordinator/ending.py) — the one place a job attempt ends, its metrics are
stored, its model's steps move, and (by the job's retry policy) a new attempt is queued.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import grpc
from gpufleet.coordinator import states
from gpufleet.coordinator.agents import UNREACHABLE, AgentPool, Observation
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.ending import (  # end_job, ingest_probe, start_running: re-exported
    end_job,
    end_refused_launch,
    ingest_probe,
    start_running,
)
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType, TerminationReason
from sqlalchemy.engine import Engine

from gpufleet import failpoints
from gpufleet.log import event
from gpufleet.loop import Loop

log = logging.getLogger("gpufleet.coordinator.reconciler")


@dataclass(frozen=True)
class Decision:
    # keep: nothing to do; relaunch: the agent never got the Launch; stop: re-send a stop;
    # probe: the agent forgot the job, judge its outputs; finish: end the attempt.
    action: str
    status: JobStatus | None = None
    exit_code: int | None = None
    message: str = ""
    probe: dict[str, Any] | None = None


KEEP = Decision("keep")


def outputs_complete(job_type: JobType, probe: dict[str, Any] | None) -> bool:
    """A TRAIN run is complete when val.csv has every row; an EVAL run when its result zip exists."""
    if not probe:
        return False
    if job_type is JobType.EVAL:
        return bool(probe.get("has_result_zip"))
    return bool(probe.get("completed"))


def decide(job: JobRow, obs: Observation, *, startup: bool) -> Decision:
    """What to do with a RUNNING attempt given what its agent said."""
    if job.status is not JobStatus.RUNNING:
        return KEEP
    if obs.kind == "error":
        return KEEP  # the node's heartbeat timeout decides; never guess from one failed call
    if obs.kind == "not_found":
        # Never confirmed by the agent: the coordinator died between committing the assignment
        # and Launch (or Launch was lost). Launch is idempotent, so send it (again).
        if job.observed_state is None:
            return Decision("relaunch") if job.desired_state is DesiredState.RUN else Decision(
                "finish", JobStatus.STOPPED, message=_stop_message(job, "before launch"))
        return Decision("probe")
    if obs.state in ("PENDING", "RUNNING"):
        return Decision("stop") if job.desired_state is DesiredState.STOP else KEEP
    # The exit code decides, whatever the state says (SkyPilot #8928), in the stored convention
    # (states.exit_code_for): 0 SUCCESS, -1 STOPPED, anything else FAILED.
    ended = obs.state in ("SUCCEEDED", "FAILED")
    if (ended and obs.exit_code == states.EXIT_OK) or (obs.state == "SUCCEEDED" and obs.exit_code is None):
        return Decision("finish", JobStatus.SUCCESS, 0, "", obs.probe)
    if ended and obs.exit_code != states.EXIT_STOPPED:
        if obs.exit_code is None:  # could not be started on the host
            return Decision("finish", JobStatus.FAILED, None,
                            TerminationReason.LAUNCH_FAILED.message(obs.message), obs.probe)
        # One reason per event, whichever daemon restarted first (issue 12): the exit code is the
        # fact; when the coordinator happened to learn it does not change it.
        reason = TerminationReason.EXIT_NONZERO
        detail = f"exit code {obs.exit_code}" + (f"; {obs.message}" if obs.message else "")
        return Decision("finish", JobStatus.FAILED, obs.exit_code, reason.message(detail), obs.probe)
    if obs.state == "STOPPED" or ended:  # STOPPED whatever it exited with (agent/states.py), or ended with -1
        if job.desired_state is DesiredState.STOP:
            message = _stop_message(job)
        else:  # fenced, or stopped on the host by someone else
            message = f"STOPPED_ON_AGENT: {obs.message or 'no reason given'}"
        return Decision("finish", JobStatus.STOPPED, -1, message, obs.probe)
    if obs.state == "LOST":
        return judge_missing(job, obs.probe)
    return KEEP


def _stop_message(job: JobRow, detail: str = "") -> str:
    """Why a job we asked to stop ended. Who asked: a stop under --on-restart=stop, or of a
    replacement whose original turned out to have finished, leaves its reason on the row
    (set_desired_state); otherwise it was a user."""
    if job.error_message.startswith((TerminationReason.STOPPED_ON_RESTART.value,
                                     TerminationReason.SUPERSEDED_BY_ORIGINAL.value,
                                     TerminationReason.TIME_LIMIT.value)):
        return job.error_message
    return TerminationReason.STOPPED_BY_USER.message(detail)


def judge_missing(job: JobRow, probe: dict[str, Any] | None) -> Decision:
    """The container/process is gone without an exit code: the output probe is the verdict."""
    if outputs_complete(job.job_type, probe):
        return Decision("finish", JobStatus.SUCCESS, 0, "", probe)
    reason = (probe or {}).get("reason") or "probe-error"
    if job.job_type is JobType.EVAL and probe and probe.get("completed"):
        reason = "result-zip-missing"
    return Decision("finish", JobStatus.STOPPED, -1,
                    TerminationReason.SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE.message(reason), probe)


class Reconciler:
    def __init__(self, engine: Engine, agents: AgentPool, *, interval: float = 2.0,
                 on_restart: str = "keep", wake_scheduler: Callable[[], None] = lambda: None,
                 actor: str = "reconciler") -> None:
        self.engine = engine
        self.agents = agents
        self.interval = interval
        self.on_restart = on_restart
        self.wake_scheduler = wake_scheduler
        self.actor = actor
        self.first_pass_done = False
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="reconcile")
        # Its own threads: queued behind a pass over a hundred nodes, a sync could start only after
        # the node it must ask was cut off (seen in the soak: the end was never recorded, the node
        # was then LOST, and the job that had completed ran again).
        self._sync_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sync")
        self._syncing: set[str] = set()  # jobs with a sync_soon queued or running
        self._sync_lock = threading.Lock()
        self.loop = Loop("reconciler", self.run_once, interval)
        self.actions: dict[str, int] = {}
        # What was last written for each running job, so an unchanged report writes nothing.
        self._applied: dict[str, tuple[str, str]] = {}

    @property
    def last_ok(self) -> float:
        return self.loop.last_ok

    def start(self) -> None:
        self.loop.start()

    def wake(self) -> None:
        self.loop.wake()

    def close(self) -> None:
        self.loop.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sync_pool.shutdown(wait=True, cancel_futures=True)

    def run_once(self) -> None:
        with self.engine.connect() as conn:
            running = repo.running_jobs(conn)
            addresses = {n.name: n.address for n in repo.list_nodes(conn)}
        startup = not self.first_pass_done
        by_node: dict[str, list[JobRow]] = {}
        for j in running:
            by_node.setdefault(j.node or "", []).append(j)

        def one_node(node: str) -> None:
            # One ListJobs per node covers every attempt still running there; only the others
            # (ended, missing) need an Inspect of their own.
            address = addresses.get(node, "")
            try:
                live = self.agents.list_live(address) if address else None
            except grpc.RpcError as exc:
                # Unreachable: an Inspect per job would wait out its deadline each, and could only
                # keep them all. The node's heartbeat timeout decides.
                event(log, "node.unreachable", logging.WARNING, node=node, code=exc.code().name,
                      jobs=len(by_node[node]))
                return
            for job in by_node[node]:
                try:
                    self.reconcile(job, address, startup, live)
                except Exception:  # noqa: BLE001 - one job must not stop the pass
                    log.exception("reconcile failed", extra={"fields": {"job_id": job.id, "node": node}})

        list(self._pool.map(one_node, list(by_node)))
        self.first_pass_done = True
        ids = {j.id for j in running}
        self._applied = {k: v for k, v in self._applied.items() if k in ids}

    def sync_soon(self, job_ids: list[str], wait: float = 0.0, late: bool = False) -> None:
        """Reconcile these jobs on the reconciler's threads (a heartbeat saw them end), waiting up to
        `wait` seconds for them: usually the end is recorded before the caller answers, but a slow
        agent or probe never holds the caller past that."""
        with self._sync_lock:
            new = [j for j in job_ids if j not in self._syncing]
            self._syncing.update(new)
        started = []
        for job_id in new:
            try:
                started.append(self._sync_pool.submit(self._sync_one, job_id, late))
            except RuntimeError:  # shutting down: the next start's first pass reconciles it
                with self._sync_lock:
                    self._syncing.discard(job_id)
        if started and wait > 0:
            futures.wait(started, timeout=wait)

    def late_truth_soon(self, job_ids: list[str], wait: float = 0.0) -> None:
        """As sync_soon, for attempts given up for lost whose node reports they ended (late_truth)."""
        self.sync_soon(job_ids, wait, late=True)

    def late_truth(self, job_id: str, reported: Observation | None = None) -> None:
        """An attempt was ended STOPPED NODE_LOST (its lost_after passed) and maybe requeued; its
        node is back and says it ended during the silence. Ask the node (Inspect, outside any
        transaction) and store that end instead, with its metrics and log; the replacements are
        canceled or stopped (end_job's late_truth). `reported`: what the node pushed (Fleet.Report),
        so no Inspect is needed."""
        with self.engine.connect() as conn:
            job = repo.get_job(conn, job_id)
            if not states.is_lost_verdict(job.status, job.error_message) or not job.node:
                return
            address = repo.get_node(conn, job.node).address
        obs = reported or self.agents.inspect(address, job.root_id, job.attempt)
        if obs.kind != "found" or obs.state not in ("SUCCEEDED", "FAILED"):
            return
        d = decide(replace(job, status=JobStatus.RUNNING), obs, startup=False)
        if d.action != "finish" or d.status not in (JobStatus.SUCCESS, JobStatus.FAILED):
            return
        end_job(self.engine, job.id, d.status, d.message, actor=self.actor, exit_code=d.exit_code, probe=d.probe,
                log_tail=obs.log_tail, late_truth=True, progress=obs.progress, gpu_usage=obs.gpu_usage)
        if _refetch(self.engine, job.id).status is JobStatus.STOPPED:
            # Not taken: a later attempt had already succeeded (the warning says so). The node may
            # still forget the attempt (a Report's answer acknowledges it itself).
            if reported is None and self.agents.acknowledge(address, job.root_id, job.attempt):
                with self.engine.begin() as conn:
                    repo.mark_acked(conn, [job.id])
            return
        event(log, "job.late_truth", job_id=job.id, status=d.status.value, superseded_by=job.superseded_by)
        with self.engine.connect() as conn:
            stop = []
            nxt = job.superseded_by
            while nxt:
                rep = repo.get_job(conn, nxt)
                if rep.status is JobStatus.RUNNING and rep.node:
                    stop.append((rep, repo.get_node(conn, rep.node).address))
                nxt = rep.superseded_by
        if reported is None:  # on the reconciler's threads: ask the nodes now
            for rep, rep_address in stop:
                self.agents.stop(rep_address, rep.root_id, rep.attempt)
            if self.agents.acknowledge(address, job.root_id, job.attempt):
                with self.engine.begin() as conn:
                    repo.mark_acked(conn, [job.id])
        # Inside a Report nothing calls back into an agent: the syncs (on their own threads) send the
        # stops, and the Report's answer acknowledges the original.
        if stop:
            self.sync_soon([rep.id for rep, _ in stop])
        self.wake_scheduler()

    def _sync_one(self, job_id: str, late: bool = False) -> None:
        try:
            if late:
                self.late_truth(job_id)
            else:
                self.sync_job(job_id)
        except Exception:  # noqa: BLE001 - the reconcile loop tries again
            log.exception("sync after heartbeat failed", extra={"fields": {"job_id": job_id}})
        finally:
            with self._sync_lock:
                self._syncing.discard(job_id)

    def sync_job(self, job_id: str) -> None:
        """Reconcile one job now (SyncStatus, a heartbeat that disagrees with the database)."""
        with self.engine.connect() as conn:
            job = repo.get_job(conn, job_id)
            if job.status is not JobStatus.RUNNING or not job.node:
                return
            address = repo.get_node(conn, job.node).address
        self.reconcile(job, address, startup=not self.first_pass_done)

    def reconcile(self, job: JobRow, address: str, startup: bool,
                  live: dict[tuple[str, int], Observation] | None = None) -> Decision:
        if not address:
            return KEEP
        obs = (live or {}).get((job.root_id, job.attempt)) or self.agents.inspect(address, job.root_id, job.attempt)
        if startup and self.on_restart == "stop" and obs.kind == "found" and obs.state in ("PENDING", "RUNNING"):
            # The old system's behaviour, for operators who ask for it.
            with self.engine.begin() as conn:
                repo.set_desired_state(conn, job.id, DesiredState.STOP, reason="--on-restart=stop",
                                       actor=self.actor,
                                       message=TerminationReason.STOPPED_ON_RESTART.message("--on-restart=stop"))
            job = _refetch(self.engine, job.id)
        if obs.kind == "not_found":
            # Ended and acknowledged meanwhile, or requeued? Decide on the row as it is now.
            job = _refetch(self.engine, job.id)
            if job.status is not JobStatus.RUNNING:
                return KEEP
        d = decide(job, obs, startup=startup)
        if d.action == "probe":
            spec = job.spec
            probe = self.agents.probe_dir(address, spec.get("output_dir", ""), int(spec.get("total_epoch") or 0),
                                          int(spec.get("val_interval") or 0), spec.get("params_json", ""))
            if probe is None:
                return KEEP  # could not ask; try again next pass
            d = judge_missing(job, probe)
        self.apply(job, d, obs, address)
        return d

    def apply(self, job: JobRow, d: Decision, obs: Observation, address: str) -> None:
        self.actions[d.action] = self.actions.get(d.action, 0) + 1
        now = datetime.now(UTC)
        if d.action == "keep":
            seen = (obs.state, repr(sorted((obs.progress or {}).items())))
            if obs.kind == "found" and job.observed_state == obs.state and not obs.progress and not job.model_uuid:
                self._applied[job.id] = seen  # already stored (e.g. by the scheduler, from Launch's answer)
            elif obs.kind == "found" and self._applied.get(job.id) != seen:
                with self.engine.begin() as conn:
                    repo.set_observed_state(conn, job.id, obs.state, now)
                    if obs.progress:
                        p = obs.progress
                        repo.upsert_progress(conn, job.id, p["current_epoch"], p["total_epoch"], p["metrics"], now)
                    if obs.state == "RUNNING":
                        start_running(conn, job, self.actor)
                self._applied[job.id] = seen
            return
        if d.action == "relaunch":
            from gpufleet.coordinator import convert

            event(log, "job.relaunch", job_id=job.id, attempt=job.attempt, node=job.node)
            try:
                st = self.agents.launch(address, job.root_id, job.attempt, convert.spec_to_pb(job.spec),
                                        list(job.gpu_indices), job.owner)
            except grpc.RpcError as exc:
                if exc.code() in UNREACHABLE or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # Not heard: the next pass tries again; node loss ends it.
                    event(log, "job.relaunch_failed", logging.WARNING, job_id=job.id, error=str(exc.details()))
                    return
                # Heard and refused: the same end as a refused first Launch (a GPU gone bad since
                # the placement requeues; a bad spec fails), never a refusal re-sent every pass.
                end_refused_launch(self.engine, job, job.node or "", exc.code(), exc.details() or "",
                                   actor=self.actor)
                self.wake_scheduler()
                return
            except Exception as exc:  # noqa: BLE001 - next pass tries again; node loss ends it
                event(log, "job.relaunch_failed", logging.WARNING, job_id=job.id, error=str(exc))
                return
            with self.engine.begin() as conn:
                repo.set_observed_state(conn, job.id, convert.agent_state_name(st.state), now)
            return
        if d.action == "stop":
            self.agents.stop(address, job.root_id, job.attempt)
            return
        assert d.status is not None
        failpoints.hit("coordinator.reconcile.before_apply")
        end_job(self.engine, job.id, d.status, d.message, actor=self.actor, exit_code=d.exit_code, probe=d.probe,
                log_tail=obs.log_tail, progress=obs.progress, gpu_usage=obs.gpu_usage)
        if self.agents.acknowledge(address, job.root_id, job.attempt):
            with self.engine.begin() as conn:
                repo.mark_acked(conn, [job.id])
        self.wake_scheduler()


def _refetch(engine: Engine, job_id: str) -> JobRow:
    with engine.connect() as conn:
        return repo.get_job(conn, job_id)


__all__ = ["KEEP", "Decision", "Reconciler", "decide", "end_job", "ingest_probe", "judge_missing",
           "outputs_complete", "start_running"]
