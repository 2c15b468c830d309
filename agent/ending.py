"""How a job's attempt ends on this agent: one pure decision from what the runtime saw.

`decide_end` reads an observation (the runtime's `Seen`, the exit code and message it gave), whether
a stop was requested, and the probe's verdict, and says the final state and message to record, or
None while the job is still alive. The supervisor gathers the facts and records the outcome; the
rules live here so a table test covers every case (like the coordinator's `reconciler.decide`).
"""
from __future__ import annotations

from dataclasses import dataclass

from gpufleet.agent.runtime.base import Seen
from gpufleet.agent.states import JobState, ended_state

ALIVE = frozenset({Seen.RUNNING, Seen.CREATED})


@dataclass(frozen=True)
class Ending:
    """The state an attempt ends in and the message stored beside it."""

    state: JobState
    message: str


def decide_end(seen: Seen, exit_code: int | None, stop_requested: bool, *, runtime_message: str = "",
               probe_reason: str = "") -> Ending | None:
    """The end to record for an observed attempt; None while it still exists (created or running)."""
    if seen in ALIVE:
        return None
    if seen is Seen.EXITED and exit_code is not None:
        # The exit code decides; a stopped job is STOPPED whatever it exited with (states.ended_state).
        state = ended_state(exit_code, stop_requested)
        return Ending(state, runtime_message or ("stopped on request" if state is JobState.STOPPED else ""))
    if stop_requested:
        return Ending(JobState.STOPPED, "stopped on request; exit code unknown")
    # Gone without an exit code and nobody asked it to stop: only the probe says how far it got.
    return Ending(JobState.LOST, f"{runtime_message or 'vanished without an exit code'}; probe: {probe_reason}")
