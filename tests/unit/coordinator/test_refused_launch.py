"""What a Launch the agent heard and refused does to the job: one table for both senders."""
from __future__ import annotations

import grpc
import pytest
from gpufleet.coordinator.ending import LAUNCH_REQUEUES, refusal_requeues

S = grpc.StatusCode


@pytest.mark.parametrize(("code", "attempt", "max_retries", "requeues"), [
    (S.ABORTED, 1, 0, True),  # a GPU that went bad after the placement's snapshot, an attempt still stopping
    (S.RESOURCE_EXHAUSTED, 1, 0, True),  # a GPU still held by a fenced attempt
    (S.ABORTED, LAUNCH_REQUEUES, 0, True),  # the last bounce allowed
    (S.ABORTED, LAUNCH_REQUEUES + 1, 0, False),  # a node that always refuses: the job fails
    (S.ABORTED, LAUNCH_REQUEUES + 1, 1, True),  # the user's retries widen the bound
    (S.INVALID_ARGUMENT, 1, 5, False),  # a bad spec never gets better
    (S.FAILED_PRECONDITION, 1, 5, False),  # a stale attempt, an image on a process node
    (S.PERMISSION_DENIED, 1, 5, False),
])
def test_refusal_requeues(code: grpc.StatusCode, attempt: int, max_retries: int, requeues: bool) -> None:
    assert refusal_requeues(code, attempt, max_retries) is requeues
