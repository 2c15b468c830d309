"""The agent's end-of-job decision, as a table: what the runtime saw -> the state and message recorded."""
from __future__ import annotations

import pytest
from gpufleet.agent.ending import Ending, decide_end
from gpufleet.agent.runtime.base import Seen
from gpufleet.agent.states import ALLOWED, JobState

S, F, T, L = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST

# seen, exit code, stop requested, runtime message, probe reason -> expected ending (None: still alive)
TABLE: list[tuple[str, Seen, int | None, bool, str, str, Ending | None]] = [
    ("running", Seen.RUNNING, None, False, "", "", None),
    ("created", Seen.CREATED, None, False, "", "", None),
    ("running, stop asked", Seen.RUNNING, None, True, "", "", None),
    ("exit 0", Seen.EXITED, 0, False, "", "", Ending(S, "")),
    ("exit 1", Seen.EXITED, 1, False, "", "", Ending(F, "")),
    ("killed by signal", Seen.EXITED, 137, False, "", "", Ending(F, "")),
    ("runtime message kept", Seen.EXITED, 1, False, "OOMKilled", "", Ending(F, "OOMKilled")),
    ("stopped, trapped SIGTERM, exit 0", Seen.EXITED, 0, True, "", "", Ending(T, "stopped on request")),
    ("stopped, exit 143", Seen.EXITED, 143, True, "", "", Ending(T, "stopped on request")),
    ("stopped, runtime message", Seen.EXITED, 143, True, "gone", "", Ending(T, "gone")),
    ("exited without a code, stop asked", Seen.EXITED, None, True, "", "",
     Ending(T, "stopped on request; exit code unknown")),
    ("missing, stop asked", Seen.MISSING, None, True, "x", "epoch 3/10",
     Ending(T, "stopped on request; exit code unknown")),
    ("missing", Seen.MISSING, None, False, "", "epoch 3/10",
     Ending(L, "vanished without an exit code; probe: epoch 3/10")),
    ("missing, runtime says why", Seen.MISSING, None, False, "container removed", "complete",
     Ending(L, "container removed; probe: complete")),
    ("exited without a code", Seen.EXITED, None, False, "", "",
     Ending(L, "vanished without an exit code; probe: ")),
]


@pytest.mark.parametrize(("seen", "exit_code", "stop", "msg", "reason", "expected"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_decide_end(seen: Seen, exit_code: int | None, stop: bool, msg: str, reason: str,
                    expected: Ending | None) -> None:
    got = decide_end(seen, exit_code, stop, runtime_message=msg, probe_reason=reason)
    assert got == expected
    if got is not None:  # every end it decides is a legal move from RUNNING (and from PENDING)
        assert (JobState.RUNNING, got.state) in ALLOWED
        assert (JobState.PENDING, got.state) in ALLOWED


def test_every_seen_value_is_covered_by_the_table() -> None:
    assert {row[1] for row in TABLE} == set(Seen)
