"""What both daemons do the same way: serve /metrics, run until SIGTERM while keeping gRPC health
and the systemd watchdog honest, and turn configuration errors into one clear line and exit 2."""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc_health.v1 import health

from gpufleet import config, sdnotify
from gpufleet.errors import FleetError
from gpufleet.metrics import start_http
from gpufleet.server import set_health


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


def serve_until_signalled(hs: health.HealthServicer, services: list[str], healthy: Callable[[], bool]) -> None:
    """Tell systemd READY, then once a second (or per watchdog period) publish health and ping the
    watchdog only while healthy, so systemd restarts a daemon that is stuck, not one that is busy."""
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    sdnotify.notify("READY=1\nSTATUS=serving")
    wd = sdnotify.watchdog_interval()
    while not stop.wait(min(wd or 1.0, 1.0)):
        ok = healthy()
        set_health(hs, services, ok)
        if wd and ok:
            sdnotify.notify("WATCHDOG=1")
    sdnotify.notify("STOPPING=1")
    set_health(hs, services, False)


def main_wrapper(prog: str, run: Callable[[], int]) -> None:
    try:
        sys.exit(run())
    except FleetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(2)
