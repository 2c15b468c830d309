"""Scheduling from the CLI, on a real coordinator and agent (process runtime, fake:4): why a job
waits, dependencies, a sweep, a pipeline file, and refusals that change nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import release, wait_for
from tests.integration.test_cli import cli, js
from tests.integration.test_coordinator_reconcile import GATE

PY = sys.executable


def test_jobs_show_says_why_a_job_waits_and_after_starts_it_once_its_dependency_succeeded(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    gate = js(c.addr, "jobs", "submit", "--gpus", "4", "--output-dir", "gate", "--", PY, "-c", GATE)
    wait_for(lambda: js(c.addr, "jobs", "show", gate["job_id"])["status_name"] == "RUNNING", 60, "the gate running")
    after = js(c.addr, "jobs", "submit", "--after", gate["job_id"], "--", PY, "-c", "print('after')")
    shown = cli(c.addr, "jobs", "show", after["job_id"])
    assert shown.returncode == 0 and "DEPENDENCY: waiting for" in shown.stdout, shown.stdout
    release(a, "gate", 0)
    done = wait_for(lambda: (j := js(c.addr, "jobs", "show", after["job_id"]))["status_name"] in ("SUCCESS", "FAILED",
                    "CANCELED") and j, 60, "the dependant to end")
    assert done["status_name"] == "SUCCESS"


def test_refused_submits_exit_1_with_the_servers_reason_and_queue_nothing(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    before = c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements
    r = cli(c.addr, "jobs", "submit", "--gpus", "64", "--", PY, "-c", "pass")
    assert r.returncode == 1 and "needs 64 GPUs, largest node has 4" in r.stderr and "Traceback" not in r.stderr
    r = cli(c.addr, "jobs", "submit", "--after", "nosuchjob", "--", PY, "-c", "pass")
    assert r.returncode == 1 and "depends_on: job nosuchjob not found" in r.stderr
    assert c.stub.ListJobs(cpb.ListJobsQuery(), timeout=5).total_elements == before


def test_a_sweep_and_a_pipeline_from_the_cli(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    arr = js(c.addr, "jobs", "submit", "--array", "3", "--max-running", "1", "--output-dir", "sw", "--",
             PY, "-c", "import os; print(os.environ['FLEET_ARRAY_INDEX'])")
    assert [j["name"].endswith(f"[{i}]") for i, j in enumerate(arr["jobs"])] == [True] * 3
    wait_for(lambda: all(j.status_name == "SUCCESS" for j in c.stub.GetArray(
        cpb.ArrayRef(array_id=arr["array_id"]), timeout=5).jobs), 90, "the sweep to succeed")

    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "cli-pl", "steps": [
        {"name": "b", "after": ["a"], "command": [PY, "-c", "print('b')"]},
        {"name": "a", "command": [PY, "-c", "print('a')"]}]}))
    p = js(c.addr, "pipelines", "submit", str(f))
    assert [s["name"] for s in p["steps"]] == ["a", "b"]
    done = wait_for(lambda: (x := js(c.addr, "pipelines", "show", p["pipeline_id"]))["state"] == "SUCCESS" and x,
                    90, "the pipeline to succeed")
    assert {s["status_name"] for s in done["steps"]} == {"SUCCESS"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"name": "a", "after": ["a"], "command": ["true"]}]}))
    r = cli(c.addr, "pipelines", "submit", str(bad))
    assert r.returncode == 1 and "the steps form a cycle: a -> a" in r.stderr
