"""How the rest of the coordinator tells the scheduler "there is work" and "the node list changed".

The reconciler, the fleet and the lifecycle nudge the scheduler; the scheduler reads the fleet's
node liveness. Handing them the scheduler itself would make a construction cycle (fleet needs the
scheduler, the scheduler needs the fleet). Instead they get this small channel, built first; the
scheduler listens once it is built. A nudge before anyone listens is dropped harmlessly: the
scheduler's first pass, when its loop starts, looks at everything anyway.
"""
from __future__ import annotations

import threading
from collections.abc import Callable


class SchedulerNudges:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._invalidate: Callable[[], None] | None = None

    def listen(self, wake: Callable[[], None], invalidate_nodes: Callable[[], None]) -> None:
        """Called once by whoever builds the scheduler: `wake` runs a pass soon, `invalidate_nodes`
        drops its cached node list."""
        with self._lock:
            self._wake, self._invalidate = wake, invalidate_nodes

    def wake(self) -> None:
        """New work (a submit, an ended job, a freed GPU): place soon."""
        with self._lock:
            wake = self._wake
        if wake is not None:
            wake()

    def nodes_changed(self) -> None:
        """A node registered, was lost or drained: the scheduler must not use a stale node list."""
        with self._lock:
            wake, invalidate = self._wake, self._invalidate
        if invalidate is not None:
            invalidate()
        if wake is not None:
            wake()
