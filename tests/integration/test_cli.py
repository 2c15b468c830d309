"""The `gpufleet` CLI against a real coordinator and agent: JSON for scripts, exit codes, clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from tests.harness import wait_for


def cli_env(coord: str, **extra: str) -> dict[str, str]:
    """The environment minus GPUFLEET_* settings, with no config file (so the developer's own
    ~/.config/gpufleet cannot leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    return {**env, "GPUFLEET_CLI_CONFIG": os.devnull + "/none", "GPUFLEET_COORDINATOR": coord, **extra}


def cli(coord: str, *args: str, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufleet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env(coord), stdin=subprocess.DEVNULL)


def js(coord: str, *args: str) -> Any:
    """JSON from a command, with -o json after the subcommand (where kubectl users put it)."""
    r = cli(coord, *args[:2], "-o", "json", *args[2:])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_json_for_every_command(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    nodes = js(c.addr, "nodes", "list")["items"]
    assert [n["name"] for n in nodes] == [a.node_name] and len(nodes[0]["gpus"]) == 4
    gpu0 = nodes[0]["gpus"][0]  # zeros present and numbers typed: GPU 0 has its index, bytes are numbers
    assert gpu0["index"] == 0 and isinstance(gpu0["memory_total_bytes"], int) and gpu0["memory_total_bytes"] > 0
    node = js(c.addr, "nodes", "show", a.node_name)
    assert node["state_name"] == "READY"
    params = json.dumps({"total_epoch": 2, "epoch_seconds": 0.05})
    m = js(c.addr, "models", "create", "G1", "--command", sys.executable, "--command", "-m", "--command",
           "gpufleet.trainer", "--params", params)
    assert m["status_name"] == "READY"
    uuid = m["uuid"]
    listed_models = js(c.addr, "models", "list")
    assert listed_models["total_elements"] == 1 and [x["uuid"] for x in listed_models["items"]] == [m["uuid"]]
    assert js(c.addr, "models", "run", uuid)["status_name"] == "IN_PROGRESS"
    done = wait_for(lambda: (x := js(c.addr, "models", "show", uuid))["step1_state_name"] == "COMPLETED" and x,
                    60, "training")
    job = done["current_attempt_id"]
    shown = js(c.addr, "jobs", "show", job)
    assert shown["status_name"] == "SUCCESS" and shown["attempt"] == 1 and shown["exit_code"] == 0
    rows = js(c.addr, "jobs", "metrics", job)["items"]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert js(c.addr, "models", "sync", uuid)["uuid"] == uuid
    tested = js(c.addr, "models", "test", uuid, "--epoch", str(done["best_epoch"]))
    assert tested["step2_state_name"] == "IN_PROGRESS"
    sub = js(c.addr, "jobs", "submit", "--gpus", "0", "--", sys.executable, "-c", "print('from the cli')")
    wait_for(lambda: js(c.addr, "jobs", "show", sub["job_id"])["status_name"] == "SUCCESS", 60, "plain job")
    logs = cli(c.addr, "jobs", "logs", sub["job_id"])
    assert logs.returncode == 0 and logs.stdout.strip() == "from the cli"
    assert js(c.addr, "jobs", "logs", sub["job_id"]) == {"job_id": sub["job_id"], "items": ["from the cli"]}
    listed = js(c.addr, "jobs", "list")
    assert sub["job_id"] in {j["job_id"] for j in listed["items"]} and listed["total_elements"] >= 2
    wide = cli(c.addr, "jobs", "list", "-o", "wide")
    assert wide.returncode == 0 and "command / image" in wide.stdout and "print('from the cli')" in wide.stdout
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


def test_usage_errors_exit_2_with_one_line_and_no_traceback(fleet) -> None:  # type: ignore[no-untyped-def]
    c, _ = fleet
    for args, words in ((["jobs", "list", "--status", "bogus"], ["--status", "'bogus' is not one of", "queued"]),
                        (["models", "list", "--status", "nope"], ["--status", "in_progress"]),
                        (["jobs", "list", "--bogus"], ["No such option: --bogus"]),
                        (["jobs", "list", "-o", "yaml"], ["--output", "table, wide, json"]),
                        (["jobs", "submit", "--env", "NOEQUALS", "--", "true"], ["--env", "KEY=VALUE"])):
        r = cli(c.addr, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(w in r.stderr for w in words), r.stderr
    v = cli(c.addr, "--version")
    assert v.returncode == 0 and v.stdout.startswith("gpufleet ")


def test_global_options_go_before_or_after_and_the_later_wins(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    env = cli_env("127.0.0.1:1")  # the variable points nowhere: the flags must win over it
    for args in (["--coordinator", c.addr, "-o", "json", "nodes", "list"],
                 ["nodes", "list", "--coordinator", c.addr, "--output=json"],
                 ["nodes", "--coordinator", c.addr, "list", "-ojson"],
                 ["--coordinator", "127.0.0.1:1", "nodes", "list", "-o", "json", "--coordinator", c.addr]):
        r = cli(c.addr, *args, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert [n["name"] for n in json.loads(r.stdout)["items"]] == [a.node_name]
    # After `--` (and after a submit's command) -o belongs to the job's own argv.
    sub = js(c.addr, "jobs", "submit", "--gpus", "0", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])",
             "-o", "json")
    wait_for(lambda: js(c.addr, "jobs", "show", sub["job_id"])["status_name"] == "SUCCESS", 60, "the job")
    assert cli(c.addr, "jobs", "logs", sub["job_id"]).stdout.strip() == "['-o', 'json']"


def test_watch_repeats_the_listing_until_interrupted(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    p = subprocess.Popen([sys.executable, "-m", "gpufleet.cli", "nodes", "list", "--watch", "--interval", "0.2",
                          "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(c.addr))
    try:
        docs = []
        assert p.stdout is not None
        while len(docs) < 2:  # pretty-printed documents, one after another; each ends with a "}" line
            chunk = []
            for line in p.stdout:
                chunk.append(line)
                if line == "}\n":
                    break
            docs.append(json.loads("".join(chunk)))
        assert all([n["name"] for n in d["items"]] == [a.node_name] for d in docs)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_login_saves_a_context_that_later_commands_use(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    conf = tmp_path / "cfg" / "config.toml"
    env = {**cli_env(""), "GPUFLEET_CLI_CONFIG": str(conf)}
    del env["GPUFLEET_COORDINATOR"]
    r = cli("", "login", "--coordinator", c.addr, "--context", "local", env=env)
    assert r.returncode == 0 and "local" in r.stdout, r.stderr
    assert conf.stat().st_mode & 0o777 == 0o600 and f'coordinator = "{c.addr}"' in conf.read_text()
    r = cli("", "login", "--coordinator", "127.0.0.1:1", "--context", "nowhere", env=env)
    assert r.returncode == 0
    listed = json.loads(cli("", "context", "list", "-o", "json", env=env).stdout)
    assert listed["current_context"] == "nowhere" and [i["name"] for i in listed["items"]] == ["local", "nowhere"]
    r = cli("", "nodes", "list", env=env)
    assert r.returncode == 1 and "nothing listens at 127.0.0.1:1" in r.stderr
    assert cli("", "context", "use", "local", env=env).returncode == 0
    r = cli("", "nodes", "list", "-o", "json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["items"][0]["name"] == a.node_name
    # A flag or variable beats the context; --context picks another for one command.
    r = cli("", "nodes", "list", env={**env, "GPUFLEET_COORDINATOR": "127.0.0.1:1"})
    assert r.returncode == 1 and "127.0.0.1:1" in r.stderr
    r = cli("", "nodes", "list", "--context", "nowhere", env=env)
    assert r.returncode == 1 and "127.0.0.1:1" in r.stderr
    r = cli("", "nodes", "list", "--context", "missing", env=env)
    assert r.returncode == 2 and "no context 'missing'" in r.stderr
    r = cli("", "context", "use", "missing", env=env)
    assert r.returncode == 1 and "no context 'missing'" in r.stderr


def test_model_workflow_options_and_datasets_from_the_cli(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    (a.data_root / "ds").mkdir(parents=True, exist_ok=True)
    (a.data_root / "ds" / "1.png").write_text("png")
    (a.data_root / "ds" / "1.geojson").write_text("{}")
    m = js(c.addr, "models", "create", "W1", "--command", sys.executable, "--command", "-c", "--command", "pass",
           "--env", "LR=0.1", "--mount", "ds:/data/ds", "--output-dir", "runs/w1", "--constraint", "rack=x",
           "--lost-after", "600")
    assert m["spec"]["env"] == {"LR": "0.1"} and m["spec"]["output_dir"] == "runs/w1"
    assert m["spec"]["mounts"] == [{"source": "ds", "target": "/data/ds"}]
    staged = js(c.addr, "datasets", "stage", m["uuid"], "--split", "train", "--input1", "ds/1.png",
                "--label-json", "ds/1.geojson")
    assert staged["counts"] == {"train/input1": 1, "train/label-json": 1} and staged["made"] == 2
    counts = js(c.addr, "datasets", "counts", m["uuid"])
    assert counts == {"uuid": m["uuid"], "counts": {"train/input1": 1, "train/label-json": 1}, "total": 2}
    r = cli(c.addr, "datasets", "stage", m["uuid"], "--split", "holdout", "--input1", "ds/1.png")
    assert r.returncode == 2 and "--split" in r.stderr
    # A failed model points at its job's log, which says why.
    bad = js(c.addr, "models", "create", "W2", "--command", sys.executable, "--command", "-c", "--command",
             "import sys; print('no train.py here'); sys.exit(2)")
    assert cli(c.addr, "models", "run", bad["uuid"]).returncode == 0
    failed = wait_for(lambda: (x := js(c.addr, "models", "show", bad["uuid"]))["status_name"] == "ERROR" and x, 60,
                      "the model to fail")
    shown = cli(c.addr, "models", "show", bad["uuid"])
    assert f"gpufleet jobs logs {failed['current_attempt_id']}" in shown.stderr, shown.stderr
    assert "no train.py here" in cli(c.addr, "jobs", "logs", failed["current_attempt_id"]).stdout
    # The constraint reached the coordinator: no node carries rack=x, so the run is refused or waits on it.
    run = cli(c.addr, "models", "run", m["uuid"])
    if run.returncode == 0:
        job = js(c.addr, "models", "show", m["uuid"])["current_attempt_id"]
        assert "rack=x" in js(c.addr, "jobs", "show", job)["pending_reason"]
    else:
        assert "rack=x" in run.stderr, run.stderr
