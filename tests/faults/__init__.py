"""The fault matrix (issue 6): real daemons killed at failpoints, a database restarted, messages
replayed, clocks shifted — each test ends with the invariants of tests/invariants.py.

Shared helpers live here. Jobs that must outlive a fault are "gated": they append a line to
`runs` in their output folder (a second run of the same job would show as a second line), then
wait for a `release` file there and exit with the code written in it.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.harness import AgentProc, CoordinatorProc, release, runs, wait_for  # noqa: F401 - release/runs re-exported
from tests.invariants import check_invariants

PY = sys.executable
IMAGE = "gpufleet-tiny:latest"
GATE = (
    "import os, sys, time\n"
    "open('runs', 'a').write('run\\n')\n"
    "print('gate: waiting', flush=True)\n"
    "while not os.path.exists('release'):\n"
    "    time.sleep(0.02)\n"
    "sys.exit(int(open('release').read().strip() or 0))\n"
)
GATED = [PY, "-c", GATE]
GATED_SH = ["/bin/sh", "-c",
            "echo run >> /output/runs; echo 'gate: waiting'; "
            "while [ ! -f /output/release ]; do sleep 0.05; done; exit $(cat /output/release)"]


def gated(runtime: str) -> dict[str, Any]:
    """JobSpec fields of a gated job for the process or docker runtime."""
    return {"command": GATED_SH, "image": IMAGE} if runtime == "docker" else {"command": GATED}


def dead(daemon_owner: AgentProc | CoordinatorProc) -> bool:
    p = daemon_owner.daemon.proc
    return p is not None and p.poll() is not None


def wait_dead(d: AgentProc | CoordinatorProc, what: str, timeout: float = 30) -> None:
    wait_for(lambda: dead(d), timeout, f"{what} to die at its failpoint (log:\n{d.daemon.log_tail(15)})")
    assert d.daemon.proc is not None and d.daemon.proc.returncode == -9, d.daemon.log_tail(20)


def restart_clean(d: AgentProc | CoordinatorProc) -> None:
    """Start again without any failpoint (as after a crash: SIGKILL first if still alive)."""
    d.daemon.env = {k: v for k, v in d.daemon.env.items() if k != "GPUFLEET_FAILPOINTS"}
    d.kill()
    d.start()


def sqlite_url(c: CoordinatorProc) -> str:
    return f"sqlite:///{c.root / 'state' / 'coordinator.db'}"


def settle(url: str | None, agents: Mapping[str, Path] | Iterable[Path], docker_client: Any = None,
           timeout: float = 20) -> None:
    """Wait until the settled invariants hold; fail with every violation still seen at the end."""
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        last = check_invariants(url, agents, docker_client, settled=True)
        return not last

    try:
        wait_for(ok, timeout, "settled invariants", interval=0.2)
    except AssertionError:
        raise AssertionError(f"{len(last)} invariant violation(s) after {timeout}s:\n  " + "\n  ".join(last)) from None


def containers(docker_client: Any, *, job_id: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
    """`docker ps -a` rows of gpufleet containers (one list call: no per-container inspect that a
    concurrent removal could turn into NotFound)."""
    labels = ["gpufleet.agent" if node is None else f"gpufleet.agent={node}"]
    if job_id is not None:
        labels.append(f"gpufleet.job_id={job_id}")
    rows: list[dict[str, Any]] = docker_client.api.containers(all=True, filters={"label": labels})
    return rows


def remove_containers(docker_client: Any, node_names: Iterable[str]) -> None:
    for name in node_names:
        for row in containers(docker_client, node=name):
            try:
                docker_client.api.remove_container(row["Id"], force=True, v=True)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
