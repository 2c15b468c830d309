"""The one way a job attempt ends: `end_job`, in one transaction, stores its end (status, exit
code, reason), its metric rows (what cannot be stored dropped with a warning on the job), its last
progress and log tail, moves its model's steps, and (by the job's retry policy, or after its node
stayed silent past lost_after) queues the next attempt. The reconciler, agents' pushed reports
(coordinator/reports.py), the node sweep (coordinator/fleet.py) and user actions
(coordinator/lifecycle.py) all end attempts through it, so an end is applied the same way whoever
learns of it first, and a repeat changes nothing (the first verdict stands; the one exception, a
lost verdict replaced by the node's true end, is `late_truth`).
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from collections.abc import Callable
from typing import Any

import grpc
from gpufleet.coordinator import states, usage
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.rows import JobRow
from gpufleet.coordinator.db.schema import METRIC_KEY_LEN
from gpufleet.coordinator.metrics import job_ended
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType, ModelStatus, Step, TerminationReason
from sqlalchemy.engine import Connection, Engine

from gpufleet import failpoints
from gpufleet.errors import FailedPrecondition
from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.ending")


def _step_fields(step: Step, probe: dict[str, Any] | None, saved: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if saved:
        out[f"step{step.value}_metric_saved"] = True
    if step is Step.TRAIN and probe and probe.get("best_epoch"):
        out["best_epoch"] = int(probe["best_epoch"])
    return out


def clean_metric_rows(split: str, rows: list[Any], warnings: list[str]) -> list[tuple[int, dict[str, float]]]:
    """A report's metric rows with what cannot be stored left out, each kind of drop noted once in
    `warnings`: keys over METRIC_KEY_LEN characters, empty or not printable; values that are not
    finite numbers; epochs that are not whole numbers >= 0. Nothing a job writes may wedge it."""
    out: list[tuple[int, dict[str, float]]] = []
    bad_keys: set[str] = set()
    bad_epochs = 0
    for row in rows:
        try:
            epoch = int(row[0])
        except (TypeError, ValueError, OverflowError):
            epoch = -1
        if isinstance(row[0], bool) or epoch < 0:
            bad_epochs += 1
            continue
        values: dict[str, float] = {}
        for key, value in dict(row[1]).items():
            if not isinstance(key, str) or not 1 <= len(key) <= METRIC_KEY_LEN or not key.isprintable():
                bad_keys.add(repr(key)[:80])
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                continue
            if math.isfinite(number):
                values[key] = number
        if values:
            out.append((epoch, values))
    for key in sorted(bad_keys)[:10]:
        warnings.append(f"{split} metric {key} dropped: a name must be 1..{METRIC_KEY_LEN} printable characters")
    if bad_epochs:
        warnings.append(f"{split}: {bad_epochs} row(s) without a valid epoch dropped")
    return out


def ingest_probe(conn: Connection, job: JobRow, probe: dict[str, Any] | None) -> dict[str, int]:
    """Store the probe's parsed csv rows (idempotent); returns rows inserted per split. What cannot
    be stored is dropped and recorded as a warning on the job."""
    counts = {"train": 0, "val": 0, "test": 0}
    if not probe:
        return counts
    # A test run shares its folder with the training run: it owns only test.csv.
    splits = ("test",) if job.job_type is JobType.EVAL else ("train", "val", "test")
    raw: dict[str, list[Any]] = {s: [] for s in splits}
    for split, epoch, values in probe.get("metrics", []):
        if split in raw and values:
            raw[split].append((epoch, values))
    warnings: list[str] = []
    by_split = {split: clean_metric_rows(split, rows, warnings) for split, rows in raw.items()}
    if warnings:
        repo.add_job_warnings(conn, job.id, warnings)
        event(log, "job.metrics_dropped", logging.WARNING, job_id=job.id, warnings=warnings)
    for split, rows in by_split.items():
        if rows:
            failpoints.hit("coordinator.metrics.mid_ingest")
            counts[split] = repo.ingest_metrics(conn, split, job.model_uuid, job.id, rows)
    return counts


def end_job(engine: Engine, job_id: str, status: JobStatus, message: str, *, actor: str,
            exit_code: int | None = None, probe: dict[str, Any] | None = None, requeue: bool = False,
            count_retry: bool = True, resume: bool = False, log_tail: bytes = b"",
            only_if: Callable[[Connection], bool] | None = None, lost: bool = False,
            late_truth: bool = False, progress: dict[str, Any] | None = None,
            gpu_usage: dict[str, Any] | None = None) -> JobRow | None:
    """End one RUNNING/QUEUED attempt, store its metrics, move its model, maybe queue the next
    attempt — all in one transaction. Returns the new attempt when one was queued.

    `lost`: its node stayed silent past lost_after; a requeue resumes from the latest epoch seen, in
    a fresh folder. `late_truth`: the attempt was given up for lost, but its node returned and
    reports that it ended during the silence: that end replaces the lost verdict, and the attempts
    that replaced it are canceled (queued) or told to stop (running), SUPERSEDED_BY_ORIGINAL.

    `gpu_usage` (the agent's aggregate, coordinator/usage.py) is stored whatever the verdict: the
    GPUs were used even when another end was recorded first."""
    with engine.begin() as conn:
        job = repo.get_job(conn, job_id, for_update=True)
        if gpu_usage is not None:
            usage.record(conn, job, gpu_usage)
        if late_truth:
            if not states.is_lost_verdict(job.status, job.error_message):
                return None  # already settled (a repeated report)
            done = _succeeded_replacement(conn, job)
            if done is not None:
                # The job already ran to completion as a later attempt: that result stands (one
                # SUCCESS per job); what the original did is noted, not taken.
                repo.add_job_warnings(conn, job_id, [
                    f"ended {status.value} on {job.node} during the silence (exit {exit_code}); attempt "
                    f"{done.attempt} ({done.id}) had already succeeded, so its result stands"])
                return None
        elif job.terminal:
            return None  # someone else ended it first; the first verdict stands
        if only_if is not None and not only_if(conn):
            return None  # the reason to end it no longer holds (e.g. its node came back)
        code = exit_code if status is JobStatus.FAILED else None
        repo.set_job_status(conn, job_id, status, exit_code=code, error_message=message or None,
                            reason=message or status.value, actor=actor, late_truth=late_truth)
        if late_truth:
            _supersede_replacements(conn, job, actor)
        # metric_rows: the rows came in pages before the end (coordinator/reports.py).
        has_metrics = any(ingest_probe(conn, job, probe).values()) or bool(
            probe and (probe.get("metrics") or probe.get("metric_rows")))
        if log_tail:
            repo.save_log_tail(conn, job_id, log_tail)
        if progress and progress.get("current_epoch"):
            # The last epoch reported is what the stored progress shows once the job ended.
            repo.upsert_progress(conn, job_id, int(progress["current_epoch"]), int(progress.get("total_epoch") or 0),
                                 progress.get("metrics") or {})
        new_job = None
        if requeue:
            try:
                if lost:
                    spec: dict[str, Any] | None = _lost_spec(conn, job)
                else:
                    spec = _resume_spec(job, probe) if (resume or job.resume_on_retry) else None
                new_job = repo.requeue_job(conn, job_id, reason=message, actor=actor, count_retry=count_retry,
                                           spec=spec)
            except FailedPrecondition as exc:
                event(log, "job.requeue_refused", job_id=job_id, why=str(exc))
        if job.model_uuid:
            _move_model(conn, job, status, message, probe, has_metrics, new_job, actor)
    job_ended(status.value, message)
    event(log, "job.ended", job_id=job_id, attempt=job.attempt, node=job.node, status=status.value,
          exit_code=exit_code, message=message, requeued=new_job.id if new_job else None)
    return new_job


def _supersede_replacements(conn: Connection, original: JobRow, actor: str) -> None:
    """The attempts that replaced `original` end: queued ones are canceled at once, running ones
    are told to stop (the reconciler and the heartbeat's fencing stop them on their node, and the
    stop ends them with this reason). The model points at the original again."""
    message = TerminationReason.SUPERSEDED_BY_ORIGINAL.message(f"attempt {original.attempt} ({original.id}) "
                                                               "ended on its node during the silence")
    nxt = original.superseded_by
    while nxt:
        rep = repo.get_job(conn, nxt, for_update=True)
        if rep.status is JobStatus.QUEUED:
            repo.set_job_status(conn, rep.id, JobStatus.CANCELED, error_message=message, reason=message,
                                actor=actor)
        elif rep.status is JobStatus.RUNNING:
            repo.set_desired_state(conn, rep.id, DesiredState.STOP, reason=message, actor=actor, message=message)
        nxt = rep.superseded_by
    if original.model_uuid:
        model = repo.get_model(conn, original.model_uuid, for_update=True)
        if model.current_attempt_id != original.id and _is_descendant(conn, original, model.current_attempt_id):
            repo.update_model_states(conn, model.uuid, reason=message, actor=actor, current_attempt_id=original.id)


def _succeeded_replacement(conn: Connection, original: JobRow) -> JobRow | None:
    nxt = original.superseded_by
    while nxt:
        rep = repo.get_job(conn, nxt)
        if rep.status is JobStatus.SUCCESS:
            return rep
        nxt = rep.superseded_by
    return None


def _is_descendant(conn: Connection, original: JobRow, job_id: str | None) -> bool:
    nxt = original.superseded_by
    while nxt:
        if nxt == job_id:
            return True
        nxt = repo.get_job(conn, nxt).superseded_by
    return False


ATTEMPT_DIR = re.compile(r"-attempt\d+$")


def _lost_spec(conn: Connection, job: JobRow) -> dict[str, Any]:
    """The spec of the attempt that replaces one given up for lost: a fresh output folder
    (`<folder>-attempt<N>`, a sibling, so the old attempt's CSVs are never appended to), and for a
    training run resumeFrom/resumeEpoch at the latest epoch the coordinator saw (its checkpoint in
    the old folder; the bundled trainer and the old system's trainers read these from params)."""
    spec = dict(job.spec)
    old_dir = str(spec.get("output_dir") or "")
    if old_dir:
        spec["output_dir"] = f"{ATTEMPT_DIR.sub('', old_dir.rstrip('/'))}-attempt{job.attempt + 1}"
    if job.job_type is JobType.TRAIN and (job.model_uuid or job.resume_on_retry):
        progress = repo.get_progress(conn, [job.id]).get(job.id)
        epoch = progress.current_epoch if progress else 0
        if epoch > 0 and old_dir:
            try:
                params = json.loads(spec.get("params_json") or "{}")
            except ValueError:
                params = None
            if isinstance(params, dict):
                params["resumeFrom"] = f"../{posixpath.basename(old_dir.rstrip('/'))}/epoch_{epoch}.pth"
                params["resumeEpoch"] = epoch
                spec["params_json"] = json.dumps(params)
    return spec


def _resume_spec(job: JobRow, probe: dict[str, Any] | None) -> dict[str, Any]:
    """The old spec with resumeFrom (latest checkpoint found by the probe) put into params_json."""
    spec = dict(job.spec)
    params = json.loads(spec.get("params_json") or "{}")
    if probe and probe.get("latest_checkpoint"):
        params["resumeFrom"] = probe["latest_checkpoint"]
        params["resumeEpoch"] = int(probe.get("latest_checkpoint_epoch") or 0)
    spec["params_json"] = json.dumps(params)
    return spec


def _move_model(conn: Connection, job: JobRow, status: JobStatus, message: str, probe: dict[str, Any] | None,
                has_metrics: bool, new_job: JobRow | None, actor: str) -> None:
    model = repo.get_model(conn, job.model_uuid or "", for_update=True)
    if model.current_attempt_id != job.id:
        return  # a superseded attempt never moves the model
    if new_job is not None:
        repo.update_model_states(conn, model.uuid, reason=f"requeued: {message}", actor=actor,
                                 current_attempt_id=new_job.id, last_error=message)
        return
    step = Step.for_job_type(job.job_type)
    cur = model.states
    try:
        if status is JobStatus.SUCCESS:
            has_zip = bool(probe and probe.get("has_result_zip"))
            new = states.job_succeeded(cur, job.job_type, has_zip)
            fields = _step_fields(step, probe, has_metrics)
            if step is Step.TRAIN and has_zip:
                fields["step2_metric_saved"] = has_metrics
            repo.update_model_states(conn, model.uuid, new=new, reason=f"job {job.id} SUCCESS", actor=actor,
                                     **fields)
        elif status is JobStatus.FAILED:
            repo.update_model_states(conn, model.uuid, new=states.step_failed(cur, step),
                                     reason=f"job {job.id} FAILED", actor=actor, last_error=message)
        else:
            repo.update_model_states(conn, model.uuid, new=states.step_stopped(cur, step),
                                     reason=f"job {job.id} {status.value}", actor=actor,
                                     last_error=message, **_step_fields(step, probe, False))
    except FailedPrecondition as exc:
        # The model moved on (e.g. canceled) while the job ended: the job's truth is stored anyway.
        event(log, "model.outcome_skipped", logging.WARNING, model=model.uuid, job_id=job.id, why=str(exc))


def start_running(conn: Connection, job: JobRow, actor: str) -> None:
    """A model's attempt is confirmed running: its step IN_PROGRESS (idempotent)."""
    if not job.model_uuid:
        return
    model = repo.get_model(conn, job.model_uuid)
    if model.current_attempt_id != job.id:
        return
    step = Step.for_job_type(job.job_type)
    if model.states.step(step) is ModelStatus.IN_PROGRESS and model.status is ModelStatus.IN_PROGRESS:
        return
    cur = model.states
    new = (states.ModelStates(ModelStatus.IN_PROGRESS, ModelStatus.IN_PROGRESS, cur.step2) if step is Step.TRAIN
           else states.ModelStates(ModelStatus.IN_PROGRESS, cur.step1, ModelStatus.IN_PROGRESS))
    try:
        repo.update_model_states(conn, model.uuid, new=new, reason=f"job {job.id} running", actor=actor)
    except FailedPrecondition as exc:
        event(log, "model.running_skipped", logging.WARNING, model=model.uuid, job_id=job.id, why=str(exc))


# Launch trouble never uses up the user's retries, but is bounded so that a node that always refuses
# cannot make a job bounce for ever.
LAUNCH_REQUEUES = 3
# Refusals that resolve themselves: a GPU still held by a fenced attempt, another attempt of the job
# still stopping, a GPU that went bad after the snapshot the placement used.
TRANSIENT_REFUSALS = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)


def refusal_requeues(code: grpc.StatusCode, attempt: int, max_retries: int) -> bool:
    """Whether a Launch the agent refused with `code` queues the job again (else it fails). Pure."""
    return code in TRANSIENT_REFUSALS and attempt <= max_retries + LAUNCH_REQUEUES


def end_refused_launch(engine: Engine, job: JobRow, node: str, code: grpc.StatusCode, detail: str, *,
                       actor: str) -> None:
    """The agent answered a Launch (the scheduler's or the reconciler's re-send) and refused it:
    nothing runs there for this attempt. One path for both senders."""
    event(log, "job.launch_failed", logging.WARNING, job_id=job.id, attempt=job.attempt, node=node,
          code=code.name, detail=detail)
    requeue = refusal_requeues(code, job.attempt, job.max_retries)
    end_job(engine, job.id, JobStatus.STOPPED if requeue else JobStatus.FAILED,
            TerminationReason.LAUNCH_FAILED.message(f"{node}: {code.name}: {detail}"), actor=actor,
            requeue=requeue, count_retry=False)
