"""User-settable priority, capped by role.

Admins give any priority; a token of role `user` at most `cap` (--user-max-priority, default 100).
Above the cap a submit is refused (INVALID_ARGUMENT naming the field and the cap), not clamped: a
job quietly given another priority than asked would surprise its owner later, in the queue. Lower
priorities, negative ones included, are always allowed (a user may yield to others).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

DEFAULT_USER_MAX_PRIORITY = 100


def priorities(method: str, request: Any) -> Iterator[tuple[str, int]]:
    """(field, priority) of every job a create call asks for."""
    if method in ("SubmitJob", "CreateModel"):
        yield "priority", int(request.priority)
    elif method == "SubmitArray":
        yield "job.priority", int(request.job.priority)
    elif method == "SubmitPipeline":
        for i, step in enumerate(request.steps):
            yield f"steps[{i}].job.priority", int(step.job.priority)


def over_cap(method: str, request: Any, role: str, cap: int) -> str | None:
    """Why the call asks for more priority than `role` may give, or None."""
    if role == "admin":
        return None
    for field, value in priorities(method, request):
        if value > cap:
            return f"{field}: role {role} may set at most {cap}, got {value} (an admin may set any)"
    return None
