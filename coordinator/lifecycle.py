"""What users ask of the coordinator, as plain functions: the model lifecycle and plain jobs.

Each action checks its precondition through states.py (FAILED_PRECONDITION naming the current
states), writes in one transaction, and only then talks to agents (stop) or wakes the scheduler.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpufleet.coordinator import states
from gpufleet.coordinator.agents import AgentPool
from gpufleet.coordinator.db import repo
from gpufleet.coordinator.db.rows import JobRow, ModelRow
from gpufleet.coordinator.ending import end_job
from gpufleet.coordinator.reconciler import Reconciler
from gpufleet.coordinator.states import DesiredState, JobStatus, JobType, ModelStates, NodeState, TerminationReason
from sqlalchemy.engine import Connection, Engine

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound
from gpufleet.jobspec import JobSpec, check_portable
from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.lifecycle")
STOP_GRACE = 10
MAX_GPUS = 64


@dataclass
class Lifecycle:
    engine: Engine
    agents: AgentPool
    reconciler: Reconciler
    wake_scheduler: Callable[[], None]
    actor: str = "api"
    # Called after a node's schedulability changed (drain/undrain).
    nodes_changed: Callable[[], None] = lambda: None

    # -- models --------------------------------------------------------------------------------
    def create_model(self, *, model_no: str, version: str, train_type: str, memo: str, params_json: str,
                     spec: dict[str, Any], gpus: int, priority: int, constraints: dict[str, str],
                     max_retries: int, lost_after_seconds: int = 0) -> ModelRow:
        if len(memo) > 4096:
            raise InvalidArgument("memo", "must be at most 4096 characters")
        _check_gpus(gpus or 1)
        template = JobSpec.from_dict(spec)
        template.output_dir = template.output_dir or "models"
        template.params_json = params_json or template.params_json
        check_epoch_params(template.params_json, "params_json" if params_json else "spec.params_json")
        check_portable(template)
        self._check_runtime_exists(template.to_dict())
        check_job_size(template.to_dict(), constraints)
        with self.engine.begin() as conn:
            return repo.create_model(conn, model_no=model_no, version=version, train_type=train_type, memo=memo,
                                     params_json=params_json or "{}", spec=template.to_dict(), gpus=gpus or 1,
                                     priority=priority, constraints=constraints, max_retries=max_retries,
                                     lost_after_seconds=_lost_after(lost_after_seconds), actor=self.actor)

    def get_model(self, uuid: str) -> ModelRow:
        _check_uuid(uuid)
        with self.engine.connect() as conn:
            return repo.get_model(conn, uuid)

    def run_train(self, uuid: str) -> ModelRow:
        return self._start_train(uuid, states.run_train, "RunTrain")

    def restart_train(self, uuid: str) -> ModelRow:
        return self._start_train(uuid, states.restart_train, "RestartTrain")

    def _start_train(self, uuid: str, action: Callable[[ModelStates], ModelStates], name: str) -> ModelRow:
        _check_uuid(uuid)
        with self.engine.begin() as conn:
            model = repo.get_model(conn, uuid, for_update=True)
            new = action(model.states)
            job = self._new_job(conn, model, JobType.TRAIN, model.params_json)
            repo.update_model_states(conn, uuid, new=new, expect_version=model.row_version, reason=name,
                                     actor=self.actor, current_attempt_id=job.id, last_error="",
                                     best_epoch=None, test_epoch=None)
            out = repo.get_model(conn, uuid)
        event(log, "model.train", model=uuid, action=name, job_id=job.id)
        self.wake_scheduler()
        return out

    def resume_train(self, uuid: str) -> ModelRow:
        _check_uuid(uuid)
        with self.engine.connect() as conn:
            model = repo.get_model(conn, uuid)
            states.resume_train(model.states)  # precondition first, before asking any agent
            old = self._current_job(conn, model)
            address = repo.get_node(conn, old.node).address if old.node else ""
        probe = None
        if address:
            spec = old.spec
            probe = self.agents.probe_dir(address, spec.get("output_dir", ""), int(spec.get("total_epoch") or 0),
                                          int(spec.get("val_interval") or 0), spec.get("params_json", ""))
        params = json.loads(old.spec.get("params_json") or "{}")
        # When the old node cannot be asked, the trainer finds its own latest checkpoint.
        params["resumeFrom"] = (probe or {}).get("latest_checkpoint") or "latest"
        params["resumeEpoch"] = int((probe or {}).get("latest_checkpoint_epoch") or 0)
        spec = dict(old.spec, params_json=json.dumps(params))
        with self.engine.begin() as conn:
            model = repo.get_model(conn, uuid, for_update=True)
            new = states.resume_train(model.states)
            job = repo.requeue_job(conn, old.id, reason="ResumeTrain", actor=self.actor, count_retry=False,
                                   spec=spec)
            if job is None:
                raise FailedPrecondition(f"ResumeTrain: job {old.id} was already superseded")
            repo.update_model_states(conn, uuid, new=new, expect_version=model.row_version, reason="ResumeTrain",
                                     actor=self.actor, current_attempt_id=job.id, last_error="")
            out = repo.get_model(conn, uuid)
        event(log, "model.train", model=uuid, action="ResumeTrain", job_id=job.id,
              resume_from=params["resumeFrom"])
        self.wake_scheduler()
        return out

    def cancel_train(self, uuid: str) -> ModelRow:
        return self._cancel(uuid, states.cancel_train, "CancelTrain")

    def cancel_test(self, uuid: str) -> ModelRow:
        return self._cancel(uuid, states.cancel_test, "CancelTest")

    def _cancel(self, uuid: str, action: Callable[[ModelStates], ModelStates], name: str) -> ModelRow:
        _check_uuid(uuid)
        with self.engine.begin() as conn:
            model = repo.get_model(conn, uuid, for_update=True)
            new = action(model.states)
            repo.update_model_states(conn, uuid, new=new, expect_version=model.row_version, reason=name,
                                     actor=self.actor, last_error=f"{name} by user")
            job = repo.get_job(conn, model.current_attempt_id) if model.current_attempt_id else None
        if job is not None:
            self._stop_job(job, name)
        with self.engine.connect() as conn:
            return repo.get_model(conn, uuid)

    def run_test(self, uuid: str, epoch: int) -> ModelRow:
        _check_uuid(uuid)
        if epoch < 1:
            raise InvalidArgument("epoch", f"must be >= 1, got {epoch}")
        with self.engine.begin() as conn:
            model = repo.get_model(conn, uuid, for_update=True)
            new = states.run_test(model.states)
            params = json.loads(model.params_json or "{}")
            total = _int(model.spec.get("total_epoch")) or _int(params.get("total_epoch", params.get("totalEpoch")))
            if total and epoch > total:
                raise InvalidArgument("epoch", f"must be <= total_epoch {total}, got {epoch}")
            train = self._last_train_job(conn, model)
            params.update(mode="test", testEpoch=epoch, checkpoint=f"epoch_{epoch}.pth")
            job = self._new_job(conn, model, JobType.EVAL, json.dumps(params),
                                output_dir=train.spec.get("output_dir") if train else None)
            repo.update_model_states(conn, uuid, new=new, expect_version=model.row_version, reason="RunTest",
                                     actor=self.actor, current_attempt_id=job.id, test_epoch=epoch, last_error="")
            out = repo.get_model(conn, uuid)
        event(log, "model.test", model=uuid, job_id=job.id, epoch=epoch)
        self.wake_scheduler()
        return out

    def sync_status(self, uuid: str) -> ModelRow:
        model = self.get_model(uuid)
        if model.current_attempt_id:
            self.reconciler.sync_job(model.current_attempt_id)
        return self.get_model(uuid)

    def _new_job(self, conn: Connection, model: ModelRow, job_type: JobType, params_json: str,
                 output_dir: str | None = None) -> JobRow:
        job_id = uuidlib.uuid4().hex[:16]
        spec = dict(model.spec)
        spec["params_json"] = params_json
        spec["job_type"] = job_type.value
        # Each training run from scratch gets its own folder; resume and test reuse it.
        spec["output_dir"] = output_dir or f"{spec.get('output_dir') or 'models'}/{model.uuid}/{job_id}"
        if not spec.get("dataset") and repo.get_dataset_counts(conn, model.uuid):
            spec["dataset"] = model.uuid  # staged with StageDataset: handed to the job (agent/spec.py)
        return repo.create_job(conn, spec=spec, gpus=model.gpus, priority=model.priority,
                               constraints=model.constraints, max_retries=model.max_retries,
                               resume_on_retry=job_type is JobType.TRAIN, name=f"{model.model_no}-{job_type.value}",
                               model_uuid=model.uuid, job_type=job_type, job_id=job_id, actor=self.actor,
                               lost_after_seconds=model.lost_after_seconds)

    def _current_job(self, conn: Connection, model: ModelRow) -> JobRow:
        if not model.current_attempt_id:
            raise FailedPrecondition(f"model {model.uuid} has no job to resume")
        return repo.get_job(conn, model.current_attempt_id)

    def _last_train_job(self, conn: Connection, model: ModelRow) -> JobRow | None:
        page = repo.list_jobs(conn, model_uuid=model.uuid, status=JobStatus.SUCCESS, page=0, size=50)
        trains = [j for j in page.items if j.job_type is JobType.TRAIN]
        return trains[0] if trains else None

    # -- plain jobs ----------------------------------------------------------------------------
    def submit_job(self, *, spec: dict[str, Any], gpus: int, priority: int, constraints: dict[str, str],
                   max_retries: int, resume_on_retry: bool, name: str, request_id: str = "",
                   lost_after_seconds: int = 0,
                   with_job: Callable[[Connection, JobRow], None] | None = None, owner: str = "") -> JobRow:
        """`with_job` writes what belongs with the new job (its options) in the job's own transaction,
        so the scheduler never sees the job without it."""
        check_submission(spec, gpus, constraints)
        self._check_runtime_exists(spec)
        fingerprint = ""
        if request_id:
            check_request_id(request_id)
            fingerprint = _fingerprint(spec, gpus, priority, constraints, max_retries, resume_on_retry, name,
                                       *((lost_after_seconds,) if lost_after_seconds else ()))
            earlier = self._submitted(request_id, fingerprint)
            if earlier is not None:
                return earlier
        try:
            with self.engine.begin() as conn:
                job = repo.create_job(conn, spec=spec, gpus=gpus, priority=priority, constraints=constraints,
                                      max_retries=max_retries, resume_on_retry=resume_on_retry, name=name,
                                      actor=self.actor, lost_after_seconds=_lost_after(lost_after_seconds),
                                      owner=owner or None)
                if request_id and not repo.claim_submit_key(conn, request_id, job.id, fingerprint):
                    raise _KeyTaken  # rolls the new job back
                if with_job is not None:
                    with_job(conn, job)
        except _KeyTaken:  # a concurrent retry of the same request won: answer with its job
            earlier = self._submitted(request_id, fingerprint)
            assert earlier is not None, "a submit key that was taken is there"
            return earlier
        event(log, "job.submitted", job_id=job.id, gpus=gpus, priority=priority)
        self.wake_scheduler()
        return job

    def _check_runtime_exists(self, spec: dict[str, Any]) -> None:
        """An image needs a docker node: refused at submit when the fleet has none, instead of the
        image being ignored and the command run on a host (a process node never gets it either)."""
        if not spec.get("image"):
            return
        with self.engine.connect() as conn:
            runtimes = repo.node_runtimes(conn)
        if "docker" not in runtimes:
            raise FailedPrecondition(
                "spec.image: no node in this fleet runs the docker runtime (nodes: "
                f"{', '.join(sorted(runtimes)) or 'none registered'}); a process-runtime node never runs an "
                "image. Submit an argv command without --image, or add a docker node")

    def _submitted(self, request_id: str, fingerprint: str) -> JobRow | None:
        """The job an earlier SubmitJob with this request_id created (a client's retry), or None."""
        with self.engine.connect() as conn:
            found = repo.find_submit_key(conn, request_id)
            if found is None:
                return None
            job_id, earlier = found
            if earlier != fingerprint:
                raise InvalidArgument("request_id", f"was already used for another request (job {job_id}); "
                                      "a retry must repeat the request exactly, a new request needs a new id")
            job = repo.get_job(conn, job_id)
        event(log, "job.submit_repeated", job_id=job_id, request_id=request_id)
        return job

    def get_job(self, job_id: str) -> JobRow:
        check_job_id(job_id)
        with self.engine.connect() as conn:
            return repo.get_job(conn, job_id)

    def cancel_job(self, job_id: str) -> JobRow:
        check_job_id(job_id)
        with self.engine.connect() as conn:
            job = repo.get_job(conn, job_id)
        if job.terminal:
            return job  # canceling an ended job changes nothing
        if job.model_uuid:
            raise FailedPrecondition(
                f"job {job_id} belongs to model {job.model_uuid}: use CancelTrain or CancelTest")
        self._stop_job(job, "CancelJob")
        return self.get_job(job_id)

    def stop_job(self, job: JobRow, why: str, message: str) -> None:
        """Stop (or cancel, while queued) a job for a reason of the system's: it ends with `message`."""
        self._stop_job(job, why, message)

    def _stop_job(self, job: JobRow, why: str, message: str | None = None) -> None:
        """Cancel a queued job or stop a running one; `message` (a TerminationReason's) is what it ends
        with when the stop is not the user's (a time limit, a failed dependency)."""
        if job.status is JobStatus.QUEUED:
            end_job(self.engine, job.id, JobStatus.CANCELED,
                    message or TerminationReason.CANCELED_BY_USER.message(why), actor=self.actor)
            return
        if job.status is not JobStatus.RUNNING:
            return
        with self.engine.begin() as conn:
            repo.set_desired_state(conn, job.id, DesiredState.STOP, reason=why, actor=self.actor, message=message)
            address = repo.get_node(conn, job.node).address if job.node else ""
        if address:
            obs = self.agents.stop(address, job.root_id, job.attempt, STOP_GRACE)
            event(log, "job.stop", job_id=job.id, node=job.node, agent=obs.state or obs.kind)
        self.reconciler.sync_job(job.id)

    # -- fleet ---------------------------------------------------------------------------------
    def drain(self, name: str, drain: bool) -> None:
        if not name:
            raise InvalidArgument("name", "must not be empty")
        with self.engine.begin() as conn:
            node = repo.get_node(conn, name)
            if node.state is NodeState.LOST:
                repo.set_drain_requested(conn, name, drain)
            elif drain and node.state is NodeState.READY:
                repo.set_node_state(conn, name, NodeState.DRAINING, reason="DrainNode", actor=self.actor)
            elif not drain and node.state in (NodeState.DRAINING, NodeState.DRAINED):
                repo.set_node_state(conn, name, NodeState.READY, reason="UndrainNode", actor=self.actor)
        self.nodes_changed()

    def stage_dataset(self, uuid: str, node_name: str) -> tuple[str, str]:
        """The agent (name, address) to stage a model's dataset on."""
        model = self.get_model(uuid)
        with self.engine.connect() as conn:
            if not node_name and model.current_attempt_id:
                job = repo.get_job(conn, model.current_attempt_id)
                node_name = job.node or ""
            if not node_name:
                nodes = [n for n in repo.list_nodes(conn) if n.state is not NodeState.LOST]
                if len(nodes) != 1:
                    raise FailedPrecondition(
                        f"StageDataset: model {uuid} has no job yet and the fleet has {len(nodes)} live nodes; "
                        "name the node")
                node_name = nodes[0].name
            node = repo.get_node(conn, node_name)
        return node.name, node.address


def _check_uuid(uuid: str) -> None:
    try:
        uuidlib.UUID(uuid)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument("uuid", f"must be a UUID, got {uuid[:64]!r}") from None


def check_job_id(job_id: str) -> None:
    if not job_id or len(job_id) > 128:
        raise InvalidArgument("job_id", "must be 1 to 128 characters")


MAX_CONSTRAINTS = 64
MAX_LABEL = 256
MAX_SPEC_BYTES = 512 * 1024  # a job and its answers must stay far below gRPC's 4 MiB message limit


def check_job_size(spec: dict[str, Any], constraints: dict[str, str]) -> None:
    if len(constraints) > MAX_CONSTRAINTS:
        raise InvalidArgument("constraints", f"at most {MAX_CONSTRAINTS} entries, got {len(constraints)}")
    for k, v in constraints.items():
        if not k or len(k) > MAX_LABEL or len(v) > MAX_LABEL:
            raise InvalidArgument("constraints", f"keys (non-empty) and values must be at most {MAX_LABEL} "
                                  f"characters ({k[:40]!r})")
    size = len(json.dumps(spec))
    if size > MAX_SPEC_BYTES:
        raise InvalidArgument("spec", f"is {size} bytes as JSON; at most {MAX_SPEC_BYTES} (put large data in "
                              "files under the data root, not in the spec)")


def check_submission(spec: dict[str, Any], gpus: int, constraints: dict[str, str]) -> None:
    """What every new job is checked for before anything is written."""
    _check_gpus(gpus)
    check_portable(JobSpec.from_dict(spec))
    check_job_size(spec, constraints)
    check_epoch_params(str(spec.get("params_json") or ""), "spec.params_json", lenient=True)


MAX_LOST_AFTER = 30 * 24 * 3600


def _lost_after(seconds: int) -> int | None:
    """A request's lost_after_seconds: 0 means the coordinator's --lost-after (stored as NULL)."""
    if seconds < 0 or seconds > MAX_LOST_AFTER:
        raise InvalidArgument("lost_after_seconds", f"must be between 0 and {MAX_LOST_AFTER}, got {seconds}")
    return seconds or None


def _check_gpus(gpus: int) -> None:
    if gpus < 0 or gpus > MAX_GPUS:
        raise InvalidArgument("gpus", f"must be between 0 and {MAX_GPUS}, got {gpus}")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e999 is inf
        return 0


MAX_EPOCHS = 1_000_000


class _KeyTaken(Exception):
    pass


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_request_id(request_id: str) -> None:
    if not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id", f"must match [A-Za-z0-9._:-]{{1,128}}, got {request_id[:140]!r}")


def _fingerprint(*parts: Any) -> str:
    """The request a request_id stands for, so a reused id with other content is refused."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_epoch_params(params_json: str, field: str = "params_json", *, lenient: bool = False) -> None:
    """total_epoch / totalEpoch / val_interval in a model's params, when given, are whole numbers
    in range: the probe and RunTest compute with them.

    `lenient` (a plain job's params, which belong to its program): only values the probe reads as
    numbers (numbers and numeric strings) are checked, so other shapes accepted before still are.
    """
    try:
        params = json.loads(params_json or "{}")
    except (ValueError, RecursionError):
        return  # the repository refuses invalid JSON with its own message
    if not isinstance(params, dict):
        return
    for key in ("total_epoch", "totalEpoch", "val_interval", "valInterval"):
        if key not in params:
            continue
        value = params[key]
        if lenient:
            if isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    continue  # the probe ignores it too
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value \
            and abs(value) != float("inf") and float(value).is_integer() and 0 <= value <= MAX_EPOCHS
        if not ok:
            raise InvalidArgument(f"{field}.{key}", f"must be a whole number from 0 to {MAX_EPOCHS}, "
                                  f"got {str(params[key])[:40]}")


__all__ = ["Lifecycle", "NotFound"]
