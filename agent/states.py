"""The agent's job state machine: the one place that says which state changes are legal.

    PENDING ──► RUNNING ──► SUCCEEDED   (exit code 0)
       │           ├──────► FAILED      (exit code != 0)
       │           ├──────► STOPPED     (Stop was requested, then it ended)
       │           └──────► LOST        (vanished without an exit code; the probe judged it)
       ├──────────────────► FAILED      (could not be started)
       ├──────────────────► STOPPED     (stopped before it started)
       └──────────────────► LOST        (crash before the runtime object existed)

A LOST job can still turn out SUCCEEDED/FAILED/STOPPED when its exit code shows up later (the
docker engine was unreachable, then came back): the exit code is the stronger fact.
Terminal states never go back to PENDING/RUNNING: a finished job is never started again.
"""
from __future__ import annotations

import enum

from gpufleet.errors import FailedPrecondition


class JobState(enum.Enum):
    PENDING = "PENDING"
    """Recorded in the store; the container/process is being created."""
    RUNNING = "RUNNING"
    """The container/process is alive."""
    SUCCEEDED = "SUCCEEDED"
    """Ended with exit code 0."""
    FAILED = "FAILED"
    """Ended with a non-zero exit code, or could not be started."""
    STOPPED = "STOPPED"
    """Ended after Stop was requested."""
    LOST = "LOST"
    """Vanished without a known exit code; the probe verdict says how far it got."""


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST})
LIVE = frozenset({JobState.PENDING, JobState.RUNNING})

ALLOWED: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.PENDING, JobState.RUNNING),
        (JobState.PENDING, JobState.FAILED),
        (JobState.PENDING, JobState.STOPPED),
        (JobState.PENDING, JobState.LOST),
        (JobState.PENDING, JobState.SUCCEEDED),  # ended before the agent saw it run
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.STOPPED),
        (JobState.RUNNING, JobState.LOST),
        (JobState.LOST, JobState.SUCCEEDED),
        (JobState.LOST, JobState.FAILED),
        (JobState.LOST, JobState.STOPPED),
    }
)


class InvalidTransition(FailedPrecondition):
    def __init__(self, job_id: str, current: JobState, wanted: JobState) -> None:
        super().__init__(f"job {job_id}: cannot go from {current.value} to {wanted.value}")


def check(job_id: str, current: JobState, wanted: JobState) -> None:
    if (current, wanted) not in ALLOWED:
        raise InvalidTransition(job_id, current, wanted)


def ended_state(exit_code: int, stop_requested: bool) -> JobState:
    """The state a job ends in once its exit code is known: the exit code decides."""
    # A stopped job is STOPPED whatever it exited with (a trainer that traps SIGTERM and saves a
    # checkpoint may exit 0); the raw exit code is kept beside the state.
    if stop_requested:
        return JobState.STOPPED
    return JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED
