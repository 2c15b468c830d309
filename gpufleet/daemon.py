"""What both daemons do the same way: a built daemon (server, loops, health checks) apart from
serving it; serve /metrics; run until SIGTERM while keeping gRPC health and the systemd watchdog
honest; and turn configuration errors into one clear line and exit 2.

`build(config)` in each daemon's main.py makes a `Daemon`: the gRPC server (bound, not started), one
list of its loops with their intervals, and its other health checks. `serve(daemon)` starts it and
runs until signalled. Health is SERVING only while every check passes and no watched loop is stale:
a loop is stale when it has not completed a pass for `stale_after(interval)` (a multiple of its
interval, never less than a floor, so a busy pass is not mistaken for a stuck one).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health

from gpufleet import config, sdnotify
from gpufleet.errors import FleetError
from gpufleet.log import event
from gpufleet.metrics import start_http, stop_http
from gpufleet.server import set_health

# A loop is stale after this many intervals without a completed pass, and never sooner than the
# floor (a 0.5 s poll loop may take a few seconds over a slow docker call without being stuck).
STALE_PASSES = 12
STALE_FLOOR_S = 30.0


def stale_after(interval: float, floor: float = STALE_FLOOR_S) -> float:
    return max(STALE_PASSES * interval, floor)


@dataclass(frozen=True)
class LoopEntry:
    """One background loop of a daemon, as the daemon's one list of loops holds it."""

    name: str
    interval: float
    # Starts its thread; None when build() already started it (something before serving needs it).
    start: Callable[[], None] | None
    close: Callable[[], None]
    # Monotonic time of its last completed pass; None when its passes wait on something outside the
    # daemon (the coordinator being reachable), which must not make this daemon unhealthy.
    last_pass: Callable[[], float] | None


def stale_loops(loops: Sequence[LoopEntry], now: float, floor: float = STALE_FLOOR_S) -> list[str]:
    """The watched loops that have not completed a pass within `stale_after` of their interval. Pure."""
    return [lp.name for lp in loops
            if lp.last_pass is not None and now - lp.last_pass() > stale_after(lp.interval, floor)]


@dataclass
class Daemon:
    """A built daemon: everything `serve` needs, nothing started but what `build` had to start."""

    name: str  # "agent" or "coordinator": the prefix of its ready/stopped log events and its .addr file
    logger: logging.Logger
    server: grpc.Server
    health: health.HealthServicer
    services: list[str]
    port: int
    host: str  # the listen host, written with the bound port to <state_dir>/<name>.addr
    state_dir: Path
    loops: list[LoopEntry]
    # Health checks besides the loops' staleness, by name (the store answers, the engine answers).
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    registry: Any = None
    metrics_listen: str = ""
    # Run after the server and the loops stopped, in this order (close the store, the engine).
    closers: list[Callable[[], None]] = field(default_factory=list)
    ready_fields: Callable[[], dict[str, Any]] = dict
    stale_floor: float = STALE_FLOOR_S
    mono: Callable[[], float] = time.monotonic
    metrics_server: Any = None
    _last_problems: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Why the daemon is unhealthy now (empty when healthy): failed checks and stale loops."""
        out = []
        for what, check in self.checks.items():
            try:
                ok = check()
            except Exception:  # noqa: BLE001 - a check that raises is a failed check
                ok = False
            if not ok:
                out.append(f"{what} failed")
        out += [f"loop {name} is stale" for name in stale_loops(self.loops, self.mono(), self.stale_floor)]
        if out != self._last_problems:  # log changes only, not once a second
            event(self.logger, f"{self.name}.health", logging.WARNING if out else logging.INFO,
                  serving=not out, problems=out)
            self._last_problems = out
        return out

    def healthy(self) -> bool:
        return not self.problems()

    def start(self) -> None:
        self.server.start()
        for lp in self.loops:
            if lp.start is not None:
                lp.start()
        set_health(self.health, self.services, True)
        (self.state_dir / f"{self.name}.addr").write_text(f"{self.host}:{self.port}\n")
        if self.registry is not None:
            self.metrics_server = start_metrics(self.metrics_listen, self.registry, self.state_dir)

    def watch_health(self, stop: threading.Event, period: float = 1.0) -> None:
        """Publish health every `period` until `stop` (what `serve` runs between READY and SIGTERM)."""
        _watch(self.health, self.services, self.healthy, stop, period)

    def stop(self) -> None:
        set_health(self.health, self.services, False)
        self.server.stop(grace=2).wait()
        stop_http(self.metrics_server)
        for lp in reversed(self.loops):
            lp.close()
        for close in self.closers:
            close()


def serve(daemon: Daemon) -> int:
    """Start a built daemon, serve until SIGTERM/SIGINT, then stop it (jobs keep running)."""
    daemon.start()
    event(daemon.logger, f"{daemon.name}.ready", listen=f"{daemon.host}:{daemon.port}", **daemon.ready_fields())
    serve_until_signalled(daemon.health, daemon.services, daemon.healthy)
    daemon.stop()
    event(daemon.logger, f"{daemon.name}.stopped")
    return 0


def tune_for_latency() -> None:
    """RPC threads should not wait 5 ms (CPython's default switch interval) for the GIL behind
    background loops: a 1 ms interval keeps RPC tails short at no measurable throughput cost."""
    sys.setswitchinterval(0.001)


def start_metrics(listen: str, registry: Any, state_dir: Path) -> Any:
    """Serve /metrics when `listen` is set; the bound address goes to <state-dir>/metrics.addr."""
    if not listen:
        return None
    server, port = start_http(listen, registry)
    host, _ = config.split_hostport(listen, "--metrics-listen")
    (state_dir / "metrics.addr").write_text(f"{host}:{port}\n")
    return server


def _watch(hs: health.HealthServicer, services: list[str], healthy: Callable[[], bool], stop: threading.Event,
           period: float, watchdog: float | None = None) -> None:
    while not stop.wait(period):
        ok = healthy()
        set_health(hs, services, ok)
        if watchdog and ok:
            sdnotify.notify("WATCHDOG=1")


def serve_until_signalled(hs: health.HealthServicer, services: list[str], healthy: Callable[[], bool]) -> None:
    """Tell systemd READY, then once a second (or per watchdog period) publish health and ping the
    watchdog only while healthy, so systemd restarts a daemon that is stuck, not one that is busy."""
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    sdnotify.notify("READY=1\nSTATUS=serving")
    wd = sdnotify.watchdog_interval()
    _watch(hs, services, healthy, stop, min(wd or 1.0, 1.0), wd)
    sdnotify.notify("STOPPING=1")
    set_health(hs, services, False)


def main_wrapper(prog: str, run: Callable[[], int]) -> None:
    try:
        sys.exit(run())
    except FleetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(2)
