"""The `gpufleet` CLI against a real coordinator and agent: JSON for scripts, exit codes, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.harness import wait_for


def cli(coord: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLEET_COORDINATOR": coord}
    return subprocess.run([sys.executable, "-m", "gpufleet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def js(coord: str, *args: str) -> Any:
    r = cli(coord, "-o", "json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_json_for_every_command(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    nodes = js(c.addr, "nodes", "list")["nodes"]
    assert [n["name"] for n in nodes] == [a.node_name] and len(nodes[0]["gpus"]) == 4
    node = js(c.addr, "nodes", "show", a.node_name)
    assert node["state_name"] == "READY"
    params = json.dumps({"total_epoch": 2, "epoch_seconds": 0.05})
    m = js(c.addr, "models", "create", "G1", "--command", sys.executable, "--command", "-m", "--command",
           "gpufleet.trainer", "--params", params)
    assert m["status_name"] == "READY"
    uuid = m["uuid"]
    assert js(c.addr, "models", "list")["total_elements"] == "1"  # int64 is a string in proto JSON
    assert js(c.addr, "models", "run", uuid)["status_name"] == "IN_PROGRESS"
    done = wait_for(lambda: (x := js(c.addr, "models", "show", uuid))["step1_state_name"] == "COMPLETED" and x,
                    60, "training")
    job = done["current_attempt_id"]
    assert js(c.addr, "jobs", "show", job)["status_name"] == "SUCCESS"
    rows = js(c.addr, "jobs", "metrics", job)["rows"]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert js(c.addr, "models", "sync", uuid)["uuid"] == uuid
    tested = js(c.addr, "models", "test", uuid, "--epoch", str(done["best_epoch"]))
    assert tested["step2_state_name"] == "IN_PROGRESS"
    sub = js(c.addr, "jobs", "submit", "--gpus", "0", "--", sys.executable, "-c", "print('from the cli')")
    wait_for(lambda: js(c.addr, "jobs", "show", sub["job_id"])["status_name"] == "SUCCESS", 60, "plain job")
    logs = cli(c.addr, "jobs", "logs", sub["job_id"])
    assert logs.returncode == 0 and logs.stdout.strip() == "from the cli"
    listed = js(c.addr, "jobs", "list")
    assert sub["job_id"] in {j["job_id"] for j in listed["jobs"]}
    assert js(c.addr, "nodes", "drain", a.node_name)["state_name"] in ("DRAINING", "DRAINED")
    assert js(c.addr, "nodes", "undrain", a.node_name)["state_name"] == "READY"
    status = js(c.addr, "agent", "status", a.addr)
    assert status["health"] == "SERVING" and len(status["node"]["gpus"]) == 4


def test_cli_errors_are_clear_with_exit_codes(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    r = cli(c.addr, "models", "run", "00000000-0000-0000-0000-000000000000")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = cli(c.addr, "models", "show", "not-a-uuid")
    assert r.returncode == 1 and "uuid" in r.stderr and "INVALID_ARGUMENT" in r.stderr
    r = cli(c.addr, "models", "frobnicate")
    assert r.returncode == 2
    r = cli("127.0.0.1:1", "nodes", "list", timeout=60)
    assert r.returncode == 1 and "nothing listens at 127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr
