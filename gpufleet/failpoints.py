"""Failpoints for fault tests: `GPUFLEET_FAILPOINTS="agent.launch.after_insert=kill;x.y=error"`.

Actions: `kill` (SIGKILL this process), `error` (raise FailpointError), `delay=MS` (sleep),
`wait=PATH` (create PATH.reached, then wait up to 60 s for PATH to exist: a test acts in between).
Read once at import; when the variable is unset `hit()` is one dict lookup on an empty dict.
"""
from __future__ import annotations

import os
import signal
import time


class FailpointError(RuntimeError):
    pass


def _parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        name, _, action = item.strip().partition("=")
        if name:
            out[name] = action.strip() or "error"
    return out


_ACTIVE = _parse(os.environ.get("GPUFLEET_FAILPOINTS", ""))


def configure(text: str) -> None:
    """Replace the active failpoints (tests in the same process)."""
    _ACTIVE.clear()
    _ACTIVE.update(_parse(text))


def hit(name: str) -> None:
    if not _ACTIVE:
        return
    action = _ACTIVE.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("wait="):
        gate = action.removeprefix("wait=")
        open(gate + ".reached", "w").close()
        end = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.01)
    elif action.startswith("delay"):
        _, _, ms = action.partition("=")
        time.sleep(int(ms or "1000") / 1000)
    else:
        raise FailpointError(f"failpoint {name}")
