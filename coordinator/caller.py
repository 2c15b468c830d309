"""Who the current Coordinator call is from, for the servicers that need it (the owner of what a
submit creates, the admin who set a quota).

The auth interceptor (coordinator/tokens.py) sets it through `gpufleet.auth.set_caller` before the
handler runs and clears it after, on every call; with auth off (loopback development) nothing sets
it and `caller()` is None.
"""
from __future__ import annotations

from gpufleet.auth import caller

__all__ = ["caller", "caller_name"]


def caller_name() -> str:
    """The caller's token name, or "" without auth."""
    who = caller()
    return who.name if who is not None else ""
