"""Roles pass through to the coordinator (401/403 as HTTP), and SSE tells a browser of a change at once."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gpufleet.coordinator import tokens
from gpufleet.coordinator.db import engine as dbengine

from tests.harness import wait_for


def tokens_for(state: Path) -> dict[str, str]:
    eng = dbengine.make_engine(dbengine.default_sqlite_url(state))
    try:
        dbengine.migrate(eng)
        return {r: tokens.create_token(eng, f"t-{r}", r) for r in ("admin", "user", "viewer")}
    finally:
        eng.dispose()


def test_roles_are_the_coordinators(coordinator_factory: Callable[..., Any], serve: Callable[..., str]) -> None:
    c = coordinator_factory(start=False, extra=["--auth", "on"])
    tok = tokens_for(c.root / "state")
    c.start(wait=False)
    base = serve(c.addr)
    hdr = {r: {"Authorization": f"Bearer {t}"} for r, t in tok.items()}
    wait_for(lambda: httpx.get(f"{base}/api/models", headers=hdr["viewer"], timeout=10).status_code == 200
             or None, 60, "coordinator answering")
    assert httpx.get(f"{base}/api/models", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/models", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    body = {"model_no": "G1", "spec": {"command": ["true"]}, "gpus": 1}
    r = httpx.post(f"{base}/api/models", json=body, headers=hdr["viewer"], timeout=10)
    assert r.status_code == 403 and "viewer" in r.json()["message"]
    assert httpx.post(f"{base}/api/models", json=body, headers=hdr["user"], timeout=10).status_code == 201
    roles = {r: httpx.get(f"{base}/api/whoami", headers=h, timeout=10).json()["role"] for r, h in hdr.items()}
    assert roles == {"admin": "admin", "user": "user", "viewer": "viewer"}


def test_sse_reports_a_new_model_within_a_second(fleet: Any, serve: Callable[..., str]) -> None:
    c, _ = fleet
    base = serve(c.addr)
    got: list[tuple[float, str]] = []

    def listen() -> None:
        with httpx.stream("GET", f"{base}/api/events", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    got.append((time.monotonic(), line))
                    if len(got) >= 10:
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    # Version 1 is the poller's first look at the fleet; a change after it must bring a new event.
    wait_for(lambda: any(int(line[5:]) >= 1 for _, line in got) or None, 30, "the poller's first look")
    quiet = len(got)
    httpx.post(f"{base}/api/models", json={"model_no": "G9", "spec": {"command": ["true"]}, "gpus": 1}, timeout=10)
    # The poller looks every 0.3 s, so this is well under a second on an idle machine; the deadline
    # is generous for a loaded CI runner (no timing is asserted).
    wait_for(lambda: len(got) > quiet or None, 30, "an event after the change")
