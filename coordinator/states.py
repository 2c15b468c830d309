"""The coordinator's one state machine: jobs, models (and their two steps) and nodes.

Every status the coordinator writes goes through a `check_*` function here (the repository calls
them inside the transaction that writes the row), so a move that is not drawn below can never be
stored. Pure module: no I/O, no protobuf, no clock; `tests/unit/coordinator/test_states.py` covers
every (from, to) pair and the whole model action matrix.

Jobs (one row per attempt; a requeue is a new row, never a move back to QUEUED)::

    QUEUED ──assign──> RUNNING ──exit 0 / probe complete──────> SUCCESS
      │                  ├──────exit != 0, start failed───────> FAILED
      │                  └──────stopped, exit -1, node lost───> STOPPED
      ├──cancel before placement──> CANCELED
      └──unplaceable──────────────> FAILED

    RUNNING -> QUEUED is deliberately illegal: an attempt once handed to an agent may be running
    there, and attempts are fencing epochs, so re-placing one means a new attempt (`requeue_job`).

Models (`status`) and each step (`step1_state` = train, `step2_state` = test) share one enum::

    READY ──RunTrain──> IN_PROGRESS ──job succeeded────────────────────────> COMPLETED
                          │   └──────job exited non-zero─────────────────────> ERROR
                          └──────cancel / outputs incomplete / node lost─────> STOPPED
    COMPLETED ──RunTest──────────────────────────> IN_PROGRESS
    STOPPED ────RestartTrain / ResumeTrain / RunTest──> IN_PROGRESS
    ERROR ──────RestartTrain / RunTest────────────> IN_PROGRESS

    Steps: READY -> IN_PROGRESS -> COMPLETED | STOPPED | ERROR; COMPLETED, STOPPED and ERROR go
    back to IN_PROGRESS (restart from scratch, resume, test again); STOPPED and ERROR go back to
    READY (restart_train resets step2); READY -> COMPLETED when a train run's result zip
    completes step2 as well.

Nodes::

    READY ──drain──> DRAINING ──no job left──> DRAINED
      ^                 │                          │
      └────undrain──────┴──────────undrain─────────┘
    READY / DRAINING / DRAINED are shown UNREACHABLE while silent past --node-timeout (not a
    stored move: its jobs keep RUNNING until each one's lost_after passes)
    (older coordinators:) READY / DRAINING / DRAINED ──no heartbeat──> LOST
    LOST ──registers again──> READY, or DRAINED when an operator drain is pending (its jobs
    were all stopped when it was lost, so the drain is complete)

Same-state "transitions" are accepted as no-ops (check_* returns False, nothing is written) only
where a repeat is normal and idempotency needs it:
- job RUNNING -> RUNNING: the reconciler re-applies "still running" on every pass;
- job terminal -> same terminal: a repeated final report or a repeated stop; the first exit code
  and reason are kept (dstack's shim does the same);
- model IN_PROGRESS/COMPLETED/STOPPED/ERROR -> same: the reconciler re-applies its verdicts, and a
  cancel is followed by the agent's own STOPPED report;
- step: all five, READY -> READY because restart_train resets step2 that may never have run;
- node: all four (re-register, repeated drain/undrain, the timeout sweep seeing a LOST node again).
Nothing ever re-applies job QUEUED or model READY, so those same-state moves are illegal.
"""
from __future__ import annotations

import enum
import math
from typing import NamedTuple, TypeVar

from gpufleet.errors import FailedPrecondition, InvalidArgument


class JobStatus(enum.StrEnum):
    """A job attempt's status in the database (proto JobStatusCode)."""

    QUEUED = "QUEUED"
    """Waiting for a node; not yet handed to any agent."""
    RUNNING = "RUNNING"
    """Assigned to a node (committed before Agent.Launch, so it may still be starting there)."""
    SUCCESS = "SUCCESS"
    """Ended with exit code 0, or vanished with outputs the probe calls complete."""
    FAILED = "FAILED"
    """Ended with a non-zero exit code (the code is stored), could not start, or was unplaceable."""
    STOPPED = "STOPPED"
    """Stopped on purpose or by circumstance (user stop, node lost, outputs incomplete); exit -1."""
    CANCELED = "CANCELED"
    """Withdrawn while still queued; never ran."""


class ModelStatus(enum.StrEnum):
    """A model's status; also the state of each of its two steps (proto ModelStatus)."""

    READY = "READY"
    """Created (model) or not yet run since the last reset (step)."""
    IN_PROGRESS = "IN_PROGRESS"
    """A job of this model (or of this step) is queued or running."""
    COMPLETED = "COMPLETED"
    """The step finished with success; a model is COMPLETED after its train step or its test."""
    STOPPED = "STOPPED"
    """Stopped by a user, by node loss, or found gone with incomplete outputs; restartable."""
    ERROR = "ERROR"
    """The job exited non-zero; `last_error` says why; restartable."""


class NodeState(enum.StrEnum):
    """A node's state in the fleet (proto NodeState)."""

    READY = "READY"
    """Heartbeating and accepting placements."""
    DRAINING = "DRAINING"
    """No new placements; running jobs finish."""
    DRAINED = "DRAINED"
    """Draining and no job left."""
    LOST = "LOST"
    """Kept for rows written by older coordinators (which stopped a silent node's jobs); a node
    that registers again leaves it. Nothing declares a node LOST any more: see UNREACHABLE."""
    UNREACHABLE = "UNREACHABLE"
    """No heartbeat within --node-timeout. Never stored in `nodes.state` (shown while
    `unreachable_since` is set): its jobs keep RUNNING, each until its own lost_after passes."""


class JobType(enum.StrEnum):
    TRAIN = "TRAIN"
    """Step 1 of a model, or a plain job."""
    EVAL = "EVAL"
    """Step 2 of a model: tests one epoch's checkpoint."""


class DesiredState(enum.StrEnum):
    """What the coordinator wants for a job, kept apart from what its agent last reported."""

    RUN = "RUN"
    STOP = "STOP"


class Step(enum.IntEnum):
    """The two steps of a model; the value is the number in the column name (step1_state)."""

    TRAIN = 1
    TEST = 2

    @property
    def column(self) -> str:
        return f"step{self.value}_state"

    @classmethod
    def for_job_type(cls, job_type: JobType | str) -> Step:
        return cls.TRAIN if JobType(job_type) is JobType.TRAIN else cls.TEST


class TerminationReason(enum.StrEnum):
    """Codes that open a job's `error_message` (`CODE` or `CODE: detail`) and the status each implies."""

    EXIT_NONZERO = "EXIT_NONZERO"
    """The job's process exited non-zero while the coordinator was watching."""
    SERVER_RESTART_CONTAINER_EXIT_NONZERO = "SERVER_RESTART_CONTAINER_EXIT_NONZERO"
    """Found ended non-zero when reconciling after a coordinator restart."""
    SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE = "SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE"
    """The container is gone and the output probe says incomplete (detail: the probe's reason)."""
    SERVER_RESTART_CONTAINER_INSPECT_ERROR = "SERVER_RESTART_CONTAINER_INSPECT_ERROR"
    """The agent could not be asked, and its node was then declared LOST."""
    NODE_LOST = "NODE_LOST"
    """The job's node missed heartbeats for --node-timeout."""
    STOPPED_BY_USER = "STOPPED_BY_USER"
    """CancelTrain / CancelTest / CancelJob on a running job."""
    STOPPED_ON_RESTART = "STOPPED_ON_RESTART"
    """Found running after a coordinator restart under --on-restart=stop (the old system's rule)."""
    CANCELED_BY_USER = "CANCELED_BY_USER"
    """CancelJob (or a model cancel) while the job was still queued."""
    LAUNCH_FAILED = "LAUNCH_FAILED"
    """Agent.Launch refused the job or could not be reached within the retry limit."""
    TIME_LIMIT = "TIME_LIMIT"
    """The job ran past its time limit and was stopped (with its grace)."""
    DEPENDENCY = "DEPENDENCY"
    """A job it depends on (afterok) ended without success: it never starts (a pipeline's skip)."""

    SUPERSEDED_BY_ORIGINAL = "SUPERSEDED_BY_ORIGINAL"
    """A replacement attempt canceled or stopped because the attempt it replaced (requeued after
    its node stayed silent past lost_after) turned out to have finished during the silence."""

    def message(self, detail: str = "") -> str:
        """The stored error_message: the code, then `: detail` when there is one."""
        return f"{self.value}: {detail}" if detail else self.value


# An attempt given up for lost (STOPPED NODE_LOST after lost_after) whose node returns and reports
# that it ended during the silence gets its true end: the one move out of a terminal status, only
# for these reasons, only to what the node reports (`late_truth` in coordinator/reconciler.py).
LOST_REASONS: tuple[TerminationReason, ...] = (
    TerminationReason.NODE_LOST, TerminationReason.SERVER_RESTART_CONTAINER_INSPECT_ERROR)
LATE_TRUTH: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {(JobStatus.STOPPED, JobStatus.SUCCESS), (JobStatus.STOPPED, JobStatus.FAILED)})


def is_lost_verdict(status: JobStatus, error_message: str) -> bool:
    """The attempt was ended only because its node stayed silent (its node may still report)."""
    return status is JobStatus.STOPPED and any(
        error_message == r.value or error_message.startswith(r.value + ":") for r in LOST_REASONS)

# Exit code conventions stored in jobs.exit_code: 0 ok, -1 stopped, anything else is the job's
# own error code.
EXIT_OK = 0
EXIT_STOPPED = -1

JOB_TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
)
# Models, steps and nodes have no final state: restart, resume and test move a model on again, and
# a node comes back.

# Short names for the tables below.
J, M, N = JobStatus, ModelStatus, NodeState

JOB_TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (J.QUEUED, J.RUNNING),
        (J.QUEUED, J.CANCELED),
        (J.QUEUED, J.FAILED),
        (J.RUNNING, J.SUCCESS),
        (J.RUNNING, J.FAILED),
        (J.RUNNING, J.STOPPED),
        # no-ops (see the module docstring)
        (J.RUNNING, J.RUNNING),
        *((s, s) for s in JOB_TERMINAL),
    }
)

MODEL_TRANSITIONS: frozenset[tuple[ModelStatus, ModelStatus]] = frozenset(
    {
        (M.READY, M.IN_PROGRESS),
        (M.IN_PROGRESS, M.COMPLETED),
        (M.IN_PROGRESS, M.STOPPED),
        (M.IN_PROGRESS, M.ERROR),
        (M.COMPLETED, M.IN_PROGRESS),
        (M.STOPPED, M.IN_PROGRESS),
        (M.ERROR, M.IN_PROGRESS),
        # no-ops
        (M.IN_PROGRESS, M.IN_PROGRESS),
        (M.COMPLETED, M.COMPLETED),
        (M.STOPPED, M.STOPPED),
        (M.ERROR, M.ERROR),
    }
)

# Steps move like models, and also: back to READY (restart_train resets step2), READY ->
# COMPLETED (step2 only, in practice: a TRAIN run that also produced the test result, the zip,
# completes step2 without a test job of its own), and READY -> READY as a no-op.
STEP_TRANSITIONS: frozenset[tuple[ModelStatus, ModelStatus]] = MODEL_TRANSITIONS | {
    (M.STOPPED, M.READY),
    (M.ERROR, M.READY),
    (M.READY, M.COMPLETED),
    (M.READY, M.READY),
}

NODE_TRANSITIONS: frozenset[tuple[NodeState, NodeState]] = frozenset(
    {
        (N.READY, N.DRAINING),
        (N.READY, N.LOST),
        (N.DRAINING, N.READY),
        (N.DRAINING, N.DRAINED),
        (N.DRAINING, N.LOST),
        (N.DRAINED, N.READY),
        (N.DRAINED, N.LOST),
        (N.LOST, N.READY),
        (N.LOST, N.DRAINED),
        # no-ops (UNREACHABLE is never stored, so never a move: see NodeState.UNREACHABLE)
        *((s, s) for s in NodeState if s is not N.UNREACHABLE),
    }
)


class InvalidTransition(FailedPrecondition):
    """A status write that the state machine does not allow; nothing was changed."""

    def __init__(self, entity: str, entity_id: str, current: str, requested: str, field: str = "") -> None:
        where = f"{entity} {entity_id or '?'}" + (f" {field}" if field else "")
        super().__init__(f"{where}: cannot go from {current} to {requested}")
        self.entity = entity
        self.entity_id = entity_id
        self.field = field
        self.current = current
        self.requested = requested


S = TypeVar("S", bound=str)


def _check(
    allowed: frozenset[tuple[S, S]], frm: S, to: S, entity: str, entity_id: str, field: str = ""
) -> bool:
    if (frm, to) not in allowed:
        raise InvalidTransition(entity, entity_id, str(frm), str(to), field)
    return frm != to


def check_job(frm: JobStatus | str, to: JobStatus | str, job_id: str = "") -> bool:
    """Validate a job move; True when it changes something, False for an allowed no-op."""
    return _check(JOB_TRANSITIONS, JobStatus(frm), JobStatus(to), "job", job_id)


def check_model(frm: ModelStatus | str, to: ModelStatus | str, uuid: str = "") -> bool:
    """Validate a move of a model's `status`; True when it changes something."""
    return _check(MODEL_TRANSITIONS, ModelStatus(frm), ModelStatus(to), "model", uuid)


def check_step(
    frm: ModelStatus | str, to: ModelStatus | str, uuid: str = "", step: Step = Step.TRAIN
) -> bool:
    """Validate a move of `step1_state` or `step2_state`; True when it changes something."""
    return _check(STEP_TRANSITIONS, ModelStatus(frm), ModelStatus(to), "model", uuid, step.column)


def check_node(frm: NodeState | str, to: NodeState | str, name: str = "") -> bool:
    """Validate a node move; True when it changes something."""
    return _check(NODE_TRANSITIONS, NodeState(frm), NodeState(to), "node", name)


def node_state_on_return(drain_requested: bool) -> NodeState:
    """Where a LOST node goes when it registers or heartbeats again.

    Its jobs were all stopped when it was declared lost, so a pending drain is already complete.
    """
    return NodeState.DRAINED if drain_requested else NodeState.READY


# ---------------------------------------------------------------------------------------------
# Model lifecycle: the old UI's action matrix, enforced server-side.


class ModelStates(NamedTuple):
    """The three state columns of a model, which always change together."""

    status: ModelStatus
    step1: ModelStatus
    step2: ModelStatus

    def step(self, step: Step) -> ModelStatus:
        return self.step1 if step is Step.TRAIN else self.step2

    def describe(self) -> str:
        return f"status={self.status}, step1={self.step1}, step2={self.step2}"


class ActionNotAllowed(FailedPrecondition):
    """A model action (or reconciler outcome) whose preconditions the current states violate."""

    def __init__(self, action: str, current: ModelStates, rule: str) -> None:
        super().__init__(f"{action} not allowed with {current.describe()}: {rule}")
        self.action = action
        self.current = current
        self.rule = rule


def _result(action: str, cur: ModelStates, new: ModelStates) -> ModelStates:
    """Check that the action's result is reachable by legal moves (an inconsistent stored state,
    which the state machine never produces, is refused here rather than written over)."""
    try:
        check_model(cur.status, new.status)
        check_step(cur.step1, new.step1, step=Step.TRAIN)
        check_step(cur.step2, new.step2, step=Step.TEST)
    except InvalidTransition as exc:
        rule = f"{exc.field or 'status'} cannot go from {exc.current} to {exc.requested}"
        raise ActionNotAllowed(action, cur, rule) from None
    return new


def _nothing_running(action: str, cur: ModelStates) -> None:
    # At most one job per model: starting actions refuse while anything is IN_PROGRESS.
    if M.IN_PROGRESS in cur:
        raise ActionNotAllowed(action, cur, "a job of this model is still in progress")


def run_train(cur: ModelStates) -> ModelStates:
    """RunTrain: status READY -> IN_PROGRESS, step1 IN_PROGRESS."""
    if cur.status is not M.READY:
        raise ActionNotAllowed("RunTrain", cur, "status must be READY")
    _nothing_running("RunTrain", cur)
    return _result("RunTrain", cur, ModelStates(M.IN_PROGRESS, M.IN_PROGRESS, cur.step2))


def restart_train(cur: ModelStates) -> ModelStates:
    """RestartTrain (from scratch): status STOPPED|ERROR -> IN_PROGRESS, step1 IN_PROGRESS, step2 READY."""
    if cur.status not in (M.STOPPED, M.ERROR):
        raise ActionNotAllowed("RestartTrain", cur, "status must be STOPPED or ERROR")
    _nothing_running("RestartTrain", cur)
    return _result("RestartTrain", cur, ModelStates(M.IN_PROGRESS, M.IN_PROGRESS, M.READY))


def resume_train(cur: ModelStates) -> ModelStates:
    """ResumeTrain (from the latest checkpoint): status and step1 STOPPED -> IN_PROGRESS."""
    if cur.status is not M.STOPPED or cur.step1 is not M.STOPPED:
        raise ActionNotAllowed("ResumeTrain", cur, "status and step1 must be STOPPED")
    _nothing_running("ResumeTrain", cur)
    return _result("ResumeTrain", cur, ModelStates(M.IN_PROGRESS, M.IN_PROGRESS, cur.step2))


def cancel_train(cur: ModelStates) -> ModelStates:
    """CancelTrain: status and step1 IN_PROGRESS -> STOPPED, STOPPED."""
    if cur.status is not M.IN_PROGRESS or cur.step1 is not M.IN_PROGRESS:
        raise ActionNotAllowed("CancelTrain", cur, "status and step1 must be IN_PROGRESS")
    return _result("CancelTrain", cur, ModelStates(M.STOPPED, M.STOPPED, cur.step2))


def run_test(cur: ModelStates) -> ModelStates:
    """RunTest: step1 COMPLETED and step2 not IN_PROGRESS/COMPLETED -> status and step2 IN_PROGRESS."""
    if cur.step1 is not M.COMPLETED or cur.step2 in (M.IN_PROGRESS, M.COMPLETED):
        rule = "step1 must be COMPLETED and step2 neither IN_PROGRESS nor COMPLETED"
        raise ActionNotAllowed("RunTest", cur, rule)
    _nothing_running("RunTest", cur)
    return _result("RunTest", cur, ModelStates(M.IN_PROGRESS, cur.step1, M.IN_PROGRESS))


def cancel_test(cur: ModelStates) -> ModelStates:
    """CancelTest: step2 IN_PROGRESS -> status STOPPED, step2 STOPPED."""
    if cur.step2 is not M.IN_PROGRESS:
        raise ActionNotAllowed("CancelTest", cur, "step2 must be IN_PROGRESS")
    return _result("CancelTest", cur, ModelStates(M.STOPPED, cur.step1, M.STOPPED))


# Outcomes the reconciler applies when a model's job ends. Each applies only while the job's
# step is IN_PROGRESS, or as a repeat of itself (the states already equal its result): a late
# report for a step that was since canceled or restarted must not overwrite the newer state.


def _outcome(name: str, cur: ModelStates, step: Step, new: ModelStates) -> ModelStates:
    if cur.step(step) is not M.IN_PROGRESS and cur != new:
        raise ActionNotAllowed(name, cur, f"{step.column} must be IN_PROGRESS")
    return _result(name, cur, new)


def train_succeeded(cur: ModelStates, has_zip: bool) -> ModelStates:
    """A TRAIN job ended with success.

    No result zip: step1 COMPLETED, model COMPLETED (the test can run next). With a zip the run
    also produced the test result: step1 and step2 COMPLETED, model COMPLETED.
    """
    step2 = M.COMPLETED if has_zip else cur.step2
    return _outcome("train_succeeded", cur, Step.TRAIN, ModelStates(M.COMPLETED, M.COMPLETED, step2))


def test_succeeded(cur: ModelStates) -> ModelStates:
    """An EVAL job ended with success: step2 COMPLETED, model COMPLETED."""
    return _outcome("test_succeeded", cur, Step.TEST, ModelStates(M.COMPLETED, cur.step1, M.COMPLETED))


# pytest would otherwise try to collect this module-level function as a test when imported.
test_succeeded.__test__ = False  # type: ignore[attr-defined]


def _with_step(cur: ModelStates, step: Step, status: ModelStatus, state: ModelStatus) -> ModelStates:
    if step is Step.TRAIN:
        return ModelStates(status, state, cur.step2)
    return ModelStates(status, cur.step1, state)


def step_failed(cur: ModelStates, step: Step) -> ModelStates:
    """The step's job exited non-zero: model and that step ERROR."""
    return _outcome("step_failed", cur, step, _with_step(cur, step, M.ERROR, M.ERROR))


def step_stopped(cur: ModelStates, step: Step) -> ModelStates:
    """The step's job was stopped (cancel, node loss, container gone with incomplete outputs)."""
    return _outcome("step_stopped", cur, step, _with_step(cur, step, M.STOPPED, M.STOPPED))


def job_succeeded(cur: ModelStates, job_type: JobType | str, has_zip: bool) -> ModelStates:
    """The success outcome for a model's job of this type (TRAIN: train_succeeded, EVAL:
    test_succeeded; an EVAL job's success completes step2 with or without the zip)."""
    if Step.for_job_type(job_type) is Step.TRAIN:
        return train_succeeded(cur, has_zip)
    return test_succeeded(cur)


def exit_code_for(status: JobStatus, exit_code: int | None, job_id: str = "") -> int | None:
    """The exit code to store with a final status: the convention's default when none is given,
    and a refusal when a given code contradicts the status (the exit code decides)."""
    if status is JobStatus.SUCCESS:
        expected: int | None = EXIT_OK
    elif status is JobStatus.STOPPED:
        expected = EXIT_STOPPED
    elif status is JobStatus.FAILED:
        if exit_code in (EXIT_OK, EXIT_STOPPED):
            raise InvalidArgument("exit_code", f"job {job_id}: FAILED needs a code other than 0 and -1")
        return exit_code
    else:
        expected = None
    if exit_code is not None and exit_code != expected:
        rule = f"job {job_id}: {status} stores exit code {expected}, got {exit_code}"
        raise InvalidArgument("exit_code", rule)
    return expected


def format_duration(seconds: float | None) -> str:
    """Render a duration the way the old UI did: "2h 15m 0s", "5m 3s", "0s".

    Rule: whole seconds, rounded down; negative or missing counts as 0. Hours appear when >= 1 (no
    days: 30 hours is "30h 0m 0s"), minutes when hours or minutes are non-zero, seconds always.
    """
    if seconds is None or math.isnan(seconds) or seconds < 0:
        total = 0
    else:
        total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
