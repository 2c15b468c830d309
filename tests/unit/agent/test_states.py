"""The agent's job state machine: every (from, to) pair, the TERMINAL/LIVE split, and ended_state."""
from __future__ import annotations

import itertools

import grpc
import pytest
from gpufleet.agent.states import ALLOWED, LIVE, TERMINAL, InvalidTransition, JobState, check, ended_state

from gpufleet.errors import FailedPrecondition

P, R, S, F, T, L = (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED,
                    JobState.STOPPED, JobState.LOST)

# The legal moves, written out independently of agent.states so that a change there must be made
# here too, on purpose. Read as: from -> the states it may go to.
LEGAL: dict[JobState, set[JobState]] = {
    P: {R, S, F, T, L},  # started; ended before the agent saw it run; could not start; stopped; crashed
    R: {S, F, T, L},
    S: set(),
    F: set(),
    T: set(),
    L: {S, F, T},  # the exit code showed up after all: it is the stronger fact
}
EXPECTED = {(a, b) for a, tos in LEGAL.items() for b in tos}


def name(state: object) -> str:
    return state.value if isinstance(state, JobState) else str(state)


def test_the_allowed_set_is_exactly_the_documented_table() -> None:
    assert set(ALLOWED) == EXPECTED


@pytest.mark.parametrize(
    ("current", "wanted"),
    list(itertools.product(JobState, JobState)),
    ids=name,
)
def test_every_transition(current: JobState, wanted: JobState) -> None:
    if (current, wanted) in EXPECTED:
        check("job-7", current, wanted)  # no error
        return
    with pytest.raises(InvalidTransition) as e:
        check("job-7", current, wanted)
    err = e.value
    assert isinstance(err, FailedPrecondition)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(err) == f"job job-7: cannot go from {current.value} to {wanted.value}"


def test_terminal_and_live_partition_the_states() -> None:
    assert TERMINAL.isdisjoint(LIVE)
    assert TERMINAL | LIVE == set(JobState)
    assert LIVE == {P, R}


@pytest.mark.parametrize("state", sorted(TERMINAL, key=name), ids=name)
def test_a_finished_job_is_never_started_again(state: JobState) -> None:
    for live in LIVE:
        with pytest.raises(InvalidTransition):
            check("j", state, live)


@pytest.mark.parametrize(
    ("exit_code", "stop_requested", "expected"),
    [
        (0, False, S),
        (1, False, F),
        (7, False, F),
        (137, False, F),  # SIGKILLed by someone else
        (-1, False, F),
        (255, False, F),
        (0, True, T),  # a trainer that traps SIGTERM, saves and exits 0 was still stopped
        (1, True, T),
        (143, True, T),
        (137, True, T),
    ],
)
def test_ended_state(exit_code: int, stop_requested: bool, expected: JobState) -> None:
    assert ended_state(exit_code, stop_requested) is expected
    # Whatever it ended in is reachable from RUNNING.
    check("j", R, ended_state(exit_code, stop_requested))
