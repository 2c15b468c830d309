"""Who the current Coordinator call is from, for the servicers that need it (the owner of what a
submit creates, the admin who set a quota).

CoordinatorAuth (coordinator/tokens.py) sets it on the RPC's worker thread before the handler runs,
on every call; with auth off (loopback development) nothing sets it and `caller()` is None. A
ContextVar, not a thread-local: the handler runs in the same context as the interceptor's check.
"""
from __future__ import annotations

from contextvars import ContextVar

from gpufleet.auth import Principal

CALLER: ContextVar[Principal | None] = ContextVar("gpufleet_caller", default=None)


def caller() -> Principal | None:
    return CALLER.get()


def caller_name() -> str:
    """The caller's token name, or "" without auth."""
    who = CALLER.get()
    return who.name if who is not None else ""
