"""Table tests of coordinator/states.py: every (from, to) pair of every entity, the whole model
action matrix over all 125 (status, step1, step2) combinations, agent report mapping, durations.

The legal sets below are written out again on purpose: a change to the state machine must show
up here as a deliberate edit, not pass silently.
"""
from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Callable

import pytest
from gpufleet.coordinator import states
from gpufleet.coordinator.states import (
    ActionNotAllowed,
    InvalidTransition,
    JobStatus,
    ModelStates,
    ModelStatus,
    NodeState,
    Step,
    TerminationReason,
)

from gpufleet.errors import FailedPrecondition, InvalidArgument

J, M, N = JobStatus, ModelStatus, NodeState
READY, IP, DONE, STOP, ERR = M.READY, M.IN_PROGRESS, M.COMPLETED, M.STOPPED, M.ERROR

LEGAL_JOB = {
    (J.QUEUED, J.RUNNING), (J.QUEUED, J.CANCELED), (J.QUEUED, J.FAILED),
    (J.RUNNING, J.SUCCESS), (J.RUNNING, J.FAILED), (J.RUNNING, J.STOPPED),
    (J.RUNNING, J.RUNNING),
    (J.SUCCESS, J.SUCCESS), (J.FAILED, J.FAILED), (J.STOPPED, J.STOPPED), (J.CANCELED, J.CANCELED),
}
LEGAL_MODEL = {
    (READY, IP), (IP, DONE), (IP, STOP), (IP, ERR), (DONE, IP), (STOP, IP), (ERR, IP),
    (IP, IP), (DONE, DONE), (STOP, STOP), (ERR, ERR),
}
LEGAL_STEP = {
    (READY, IP), (IP, DONE), (IP, STOP), (IP, ERR), (DONE, IP), (STOP, IP), (ERR, IP),
    (STOP, READY), (ERR, READY), (READY, DONE),
    (READY, READY), (IP, IP), (DONE, DONE), (STOP, STOP), (ERR, ERR),
}
LEGAL_NODE = {
    (N.READY, N.DRAINING), (N.READY, N.LOST),
    (N.DRAINING, N.READY), (N.DRAINING, N.DRAINED), (N.DRAINING, N.LOST),
    (N.DRAINED, N.READY), (N.DRAINED, N.LOST),
    (N.LOST, N.READY), (N.LOST, N.DRAINED),
    (N.READY, N.READY), (N.DRAINING, N.DRAINING), (N.DRAINED, N.DRAINED), (N.LOST, N.LOST),
}


def _step_check(frm: ModelStatus, to: ModelStatus, ident: str) -> bool:
    return states.check_step(frm, to, ident, Step.TEST)


TRANSITION_TABLES: list[tuple[str, type[enum.Enum], set, Callable[..., bool], str]] = [
    ("job", JobStatus, LEGAL_JOB, states.check_job, "job"),
    ("model", ModelStatus, LEGAL_MODEL, states.check_model, "model"),
    ("step", ModelStatus, LEGAL_STEP, _step_check, "model"),
    ("node", NodeState, LEGAL_NODE, states.check_node, "node"),
]


@pytest.mark.parametrize(("kind", "members", "legal", "check", "entity"), TRANSITION_TABLES, ids=str)
def test_every_transition_pair(
    kind: str, members: type[enum.Enum], legal: set, check: Callable[..., bool], entity: str
) -> None:
    for frm, to in itertools.product(list(members), repeat=2):
        if (frm, to) in legal:
            # True for a real move, False for an allowed same-state no-op.
            assert check(frm, to, "x1") is (frm != to), (kind, frm, to)
        else:
            with pytest.raises(InvalidTransition) as info:
                check(frm, to, "x1")
            msg = str(info.value)
            assert entity in msg and "x1" in msg and f"from {frm} to {to}" in msg, msg
            assert isinstance(info.value, FailedPrecondition)
            assert (info.value.current, info.value.requested) == (frm, to)


def test_module_sets_match_the_tables() -> None:
    assert states.JOB_TRANSITIONS == LEGAL_JOB
    assert states.MODEL_TRANSITIONS == LEGAL_MODEL
    assert states.STEP_TRANSITIONS == LEGAL_STEP
    assert states.NODE_TRANSITIONS == LEGAL_NODE
    assert states.JOB_TERMINAL == {J.SUCCESS, J.FAILED, J.STOPPED, J.CANCELED}
    # Terminal job states lead nowhere but to themselves.
    assert all(frm == to for frm, to in LEGAL_JOB if frm in states.JOB_TERMINAL)


def test_step_error_names_the_column() -> None:
    with pytest.raises(InvalidTransition, match=r"model m1 step2_state: cannot go from COMPLETED to READY"):
        states.check_step(DONE, READY, "m1", Step.TEST)


def test_every_member_is_documented() -> None:
    source = open(states.__file__).read()
    for members in (JobStatus, ModelStatus, NodeState, TerminationReason):
        for member in members:
            # each member line is followed by its docstring
            assert f'{member.name} = "{member.value}"\n    """' in source, member


# ---------------------------------------------------------------------------------------------
# The action matrix.

ALL_STATES = [ModelStates(*c) for c in itertools.product(list(ModelStatus), repeat=3)]


def _legal(cur: ModelStates, new: ModelStates) -> bool:
    return (
        (cur.status, new.status) in LEGAL_MODEL
        and (cur.step1, new.step1) in LEGAL_STEP
        and (cur.step2, new.step2) in LEGAL_STEP
    )


def _idle(c: ModelStates) -> bool:
    return IP not in c


# action -> (function, name in the error, precondition, result): the documented matrix. Outcomes
# (the reconciler's) apply while their step is IN_PROGRESS or as an exact repeat. A result not
# reachable by legal moves (only from states the machine never produces) is refused as well.
ACTIONS: dict[str, tuple[Callable[[ModelStates], ModelStates], str, Callable[[ModelStates], bool],
                         Callable[[ModelStates], ModelStates]]] = {
    "run_train": (
        states.run_train, "RunTrain",
        lambda c: c.status is READY and _idle(c),
        lambda c: ModelStates(IP, IP, c.step2),
    ),
    "restart_train": (
        states.restart_train, "RestartTrain",
        lambda c: c.status in (STOP, ERR) and _idle(c),
        lambda c: ModelStates(IP, IP, READY),
    ),
    "resume_train": (
        states.resume_train, "ResumeTrain",
        lambda c: c.status is STOP and c.step1 is STOP and _idle(c),
        lambda c: ModelStates(IP, IP, c.step2),
    ),
    "cancel_train": (
        states.cancel_train, "CancelTrain",
        lambda c: c.status is IP and c.step1 is IP,
        lambda c: ModelStates(STOP, STOP, c.step2),
    ),
    "run_test": (
        states.run_test, "RunTest",
        lambda c: c.step1 is DONE and c.step2 not in (IP, DONE) and _idle(c),
        lambda c: ModelStates(IP, c.step1, IP),
    ),
    "cancel_test": (
        states.cancel_test, "CancelTest",
        lambda c: c.step2 is IP,
        lambda c: ModelStates(STOP, c.step1, STOP),
    ),
    "train_succeeded(no zip)": (
        lambda c: states.train_succeeded(c, has_zip=False), "train_succeeded",
        lambda c: c.step1 is IP,
        lambda c: ModelStates(DONE, DONE, c.step2),
    ),
    "train_succeeded(zip)": (
        lambda c: states.train_succeeded(c, has_zip=True), "train_succeeded",
        lambda c: c.step1 is IP,
        lambda c: ModelStates(DONE, DONE, DONE),
    ),
    "test_succeeded": (
        states.test_succeeded, "test_succeeded",
        lambda c: c.step2 is IP,
        lambda c: ModelStates(DONE, c.step1, DONE),
    ),
    "step_failed(train)": (
        lambda c: states.step_failed(c, Step.TRAIN), "step_failed",
        lambda c: c.step1 is IP,
        lambda c: ModelStates(ERR, ERR, c.step2),
    ),
    "step_failed(test)": (
        lambda c: states.step_failed(c, Step.TEST), "step_failed",
        lambda c: c.step2 is IP,
        lambda c: ModelStates(ERR, c.step1, ERR),
    ),
    "step_stopped(train)": (
        lambda c: states.step_stopped(c, Step.TRAIN), "step_stopped",
        lambda c: c.step1 is IP,
        lambda c: ModelStates(STOP, STOP, c.step2),
    ),
    "step_stopped(test)": (
        lambda c: states.step_stopped(c, Step.TEST), "step_stopped",
        lambda c: c.step2 is IP,
        lambda c: ModelStates(STOP, c.step1, STOP),
    ),
}


OUTCOMES = {name for name in ACTIONS if "(" in name or name == "test_succeeded"}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_action_matrix(action: str) -> None:
    fn, name, pre, result = ACTIONS[action]
    allowed = 0
    for cur in ALL_STATES:
        expected = result(cur)
        repeat = action in OUTCOMES and expected == cur
        if (pre(cur) or repeat) and _legal(cur, expected):
            assert fn(cur) == expected, (action, cur)
            allowed += 1
        else:
            with pytest.raises(ActionNotAllowed) as info:
                fn(cur)
            msg = str(info.value)
            assert isinstance(info.value, FailedPrecondition)
            assert name in msg and f"status={cur.status}, step1={cur.step1}, step2={cur.step2}" in msg, msg
    assert allowed > 0, action


def test_action_matrix_on_the_usual_path() -> None:
    """The states a user meets, spelled out (the full matrix above covers the rest)."""
    fresh = ModelStates(READY, READY, READY)
    training = states.run_train(fresh)
    assert training == (IP, IP, READY)
    trained = states.train_succeeded(training, has_zip=False)
    assert trained == (DONE, DONE, READY)
    testing = states.run_test(trained)
    assert testing == (IP, DONE, IP)
    assert states.test_succeeded(testing) == (DONE, DONE, DONE)
    assert states.cancel_test(testing) == (STOP, DONE, STOP)
    assert states.run_test(states.cancel_test(testing)) == (IP, DONE, IP)
    stopped = states.cancel_train(training)
    assert stopped == (STOP, STOP, READY)
    assert states.resume_train(stopped) == (IP, IP, READY)
    assert states.restart_train(stopped) == (IP, IP, READY)
    failed_test = states.step_failed(testing, Step.TEST)
    assert failed_test == (ERR, DONE, ERR)
    assert states.restart_train(failed_test) == (IP, IP, READY)
    with pytest.raises(ActionNotAllowed, match=r"ResumeTrain not allowed with status=ERROR, step1=COMPLETED"):
        states.resume_train(failed_test)
    # The zip shortcut: one TRAIN run that also produced the test result.
    assert states.train_succeeded(training, has_zip=True) == (DONE, DONE, DONE)
    assert states.job_succeeded(training, "TRAIN", has_zip=False) == trained
    assert states.job_succeeded(testing, "EVAL", has_zip=False) == (DONE, DONE, DONE)
    # A repeated verdict is a no-op; a late one for a step no longer running is refused.
    assert states.step_stopped(stopped, Step.TRAIN) == stopped
    late = r"train_succeeded not allowed .* step1_state must be IN_PROGRESS"
    with pytest.raises(ActionNotAllowed, match=late):
        states.train_succeeded(testing, has_zip=True)


def _apply_all(cur: ModelStates) -> list[ModelStates]:
    out = []
    for fn, _, _, _ in ACTIONS.values():
        try:
            out.append(fn(cur))
        except ActionNotAllowed:
            pass
    return out


def test_reachable_states_keep_the_invariants() -> None:
    """Everything reachable from a new model: IN_PROGRESS status iff exactly one step is in
    progress (at most one job per model), and no dead end but the finished model."""
    start = ModelStates(READY, READY, READY)
    seen = {start}
    todo = deque([start])
    while todo:
        cur = todo.popleft()
        nexts = _apply_all(cur)
        if (cur.step1, cur.step2) != (DONE, DONE):  # both steps COMPLETED: no action is left
            assert any(n != cur for n in nexts), f"dead end at {cur}"
        for n in nexts:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    for s in seen:
        in_progress_steps = [s.step1, s.step2].count(IP)
        assert (s.status is IP) == (in_progress_steps == 1), s
        assert in_progress_steps <= 1, s
    assert ModelStates(DONE, DONE, DONE) in seen
    assert len(seen) < len(ALL_STATES)


# ---------------------------------------------------------------------------------------------
# Agent reports, exit codes, reasons, durations.

@pytest.mark.parametrize(
    ("status", "given", "stored"),
    [
        (J.SUCCESS, None, 0), (J.SUCCESS, 0, 0), (J.STOPPED, None, -1), (J.STOPPED, -1, -1),
        (J.FAILED, 2, 2), (J.FAILED, None, None), (J.CANCELED, None, None),
    ],
)
def test_exit_code_for(status: JobStatus, given: int | None, stored: int | None) -> None:
    assert states.exit_code_for(status, given) == stored


@pytest.mark.parametrize(
    ("status", "given"),
    [(J.SUCCESS, 1), (J.STOPPED, 0), (J.STOPPED, 143), (J.FAILED, 0), (J.FAILED, -1), (J.CANCELED, 0)],
)
def test_exit_code_contradicting_status_is_refused(status: JobStatus, given: int) -> None:
    with pytest.raises(InvalidArgument, match="exit_code"):
        states.exit_code_for(status, given, "j1")


def test_termination_reasons() -> None:
    reason = TerminationReason.SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE
    assert reason.message("no result zip") == (
        "SERVER_RESTART_CONTAINER_MISSING_OUTPUT_INCOMPLETE: no result zip"
    )
    assert TerminationReason.NODE_LOST.message() == "NODE_LOST"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"), (0.99, "0s"), (1, "1s"), (59, "59s"), (60, "1m 0s"), (303, "5m 3s"), (3599, "59m 59s"),
        (3600, "1h 0m 0s"), (8100, "2h 15m 0s"), (8100.7, "2h 15m 0s"), (3661, "1h 1m 1s"),
        (108000, "30h 0m 0s"), (-5, "0s"), (None, "0s"), (math.nan, "0s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert states.format_duration(seconds) == text


def test_step_and_node_helpers() -> None:
    assert Step.for_job_type("TRAIN") is Step.TRAIN
    assert Step.for_job_type(states.JobType.EVAL) is Step.TEST
    assert Step.TEST.column == "step2_state"
    assert states.node_state_on_return(drain_requested=False) is N.READY
    assert states.node_state_on_return(drain_requested=True) is N.DRAINED
    for back in (N.READY, N.DRAINED):
        assert states.check_node(N.LOST, back)
