"""Learns of a job's exit the moment it happens (issue 12: the agent knows at once).

The supervisor's poll stays the safety net; this only wakes it early.
"""
from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable


class ExitWatcher:
    """Wakes the supervisor the moment a job's wrapper process exits, so an end is recorded (and
    pushed) at once rather than at the next poll: one pidfd per live wrapper (Linux 5.3+), polled in
    one thread. A pidfd works alike for the wrappers this agent spawned (its children) and for those
    it re-attached to after a restart (not its children). The poll loop stays as the safety net.
    Docker containers are not watched here: the engine's event stream does that
    (DockerRuntime.watch_exits)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._pids: dict[int, int] = {}  # pidfd -> pid
        self._lock = threading.Lock()
        self._poll = select.poll()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._poll.register(self._r, select.POLLIN)
        self._stop = False
        self.available = hasattr(os, "pidfd_open")
        self._thread = threading.Thread(target=self._run, name="exit-watch", daemon=True)

    def start(self) -> None:
        if self.available:
            self._thread.start()

    def close(self) -> None:
        self._stop = True
        os.write(self._w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def watch(self, pid: int) -> None:
        if not self.available or pid <= 0:
            return
        with self._lock:
            if pid in self._fds:
                return
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # gone already (the poll sees it), or no pidfd on this kernel
                return
            self._fds[pid] = fd
            self._pids[fd] = pid
            self._poll.register(fd, select.POLLIN)
        os.write(self._w, b"x")  # let poll() see the new fd

    def _run(self) -> None:
        while not self._stop:
            try:
                ready = self._poll.poll(1000)
            except InterruptedError:
                continue
            exited = False
            for fd, _ in ready:
                if fd == self._r:
                    try:
                        os.read(self._r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    pid = self._pids.pop(fd, None)
                    if pid is not None:
                        self._fds.pop(pid, None)
                        self._poll.unregister(fd)
                        os.close(fd)
                exited = True
            if exited:
                self._wake()
