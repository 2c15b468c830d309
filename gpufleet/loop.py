"""A periodic background loop: one thread, runs `step` every `interval` or as soon as woken,
logs and survives any error, and stamps its last success (health checks read `last_ok`)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gpufleet import failpoints

log = logging.getLogger("gpufleet.loop")


class Loop:
    def __init__(self, name: str, step: Callable[[], bool | None], interval: float,
                 mono: Callable[[], float] = time.monotonic, batch: float = 0.0) -> None:
        """`step` returns True to be called again at once (it has more work queued). `batch`: after a
        wake, wait this long for more (a burst of submits becomes one pass, not one pass each)."""
        self.name = name
        self.step = step
        self.interval = interval
        self.batch = batch
        self.mono = mono
        self.last_ok = mono()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                failpoints.hit(f"loop.{self.name}")  # fault tests hang a pass here (delay=MS)
                more = True
                while more and not self._stop.is_set():
                    more = bool(self.step())
                    # Every completed step counts: a long backlog worked off step by step is busy, not stuck.
                    self.last_ok = self.mono()
            except Exception:  # noqa: BLE001 - the loop must survive anything (e.g. a database restart)
                log.exception("loop step failed", extra={"fields": {"loop": self.name}})
            woken = self._wake.wait(self.interval)
            if woken and self.batch > 0 and not self._stop.is_set():
                self._stop.wait(self.batch)
            self._wake.clear()
