"""The CLI's own rules, checked in-process: global options anywhere, help on every option, typed
JSON, the config file and its precedence, shell completion."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from gpufleet.cli import app, config, settings
from gpufleet.cli.output import as_dict
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

ROOT = typer.main.get_command(app)


@pytest.mark.parametrize(("argv", "hoisted"), [
    (["jobs", "list", "-o", "json"], ["-o", "json", "jobs", "list"]),
    (["jobs", "list", "--output=json", "--coordinator", "h:1"],
     ["--output=json", "--coordinator", "h:1", "jobs", "list"]),
    (["-o", "json", "nodes", "list", "-ojson"], ["-o", "json", "-ojson", "nodes", "list"]),
    # after `--`, the job's argv is its own
    (["jobs", "submit", "--gpus", "1", "--", "train", "-o", "x"],
     ["jobs", "submit", "--gpus", "1", "--", "train", "-o", "x"]),
    # submit takes the rest verbatim after its first argument, even without `--`
    (["jobs", "submit", "--gpus", "1", "train", "-o", "x"], ["jobs", "submit", "--gpus", "1", "train", "-o", "x"]),
    # an option's value that looks like a global option stays with its option
    (["models", "create", "G1", "--command", "-o", "-o", "wide"],
     ["-o", "wide", "models", "create", "G1", "--command", "-o"]),
])
def test_global_options_are_moved_before_the_subcommand(argv: list[str], hoisted: list[str]) -> None:
    assert settings.hoist(argv, ROOT) == hoisted


def _commands(cmd: Any, path: str = "gpufleet") -> list[tuple[str, Any]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_every_option_and_argument_has_help_and_no_default_is_shown_twice() -> None:
    missing, doubled = [], []
    for path, cmd in _commands(ROOT):
        for p in cmd.params:
            text = getattr(p, "help", None)
            if not text:
                missing.append(f"{path} {p.name}")
            elif "default:" in text and getattr(p, "show_default", False) not in (False, None):
                doubled.append(f"{path} {p.name}")
    assert not missing, f"options without help: {missing}"
    assert not doubled, f"help names a default and shows one too: {doubled}"


def test_json_is_typed_with_zeros_present() -> None:
    node = cpb.Node(name="n", gpus=[pb.GpuInfo(index=0, memory_total_bytes=80 * 2**30)])
    d = as_dict(node)
    assert d["gpus"][0]["index"] == 0 and d["gpus"][0]["memory_total_bytes"] == 80 * 2**30
    assert d["running_jobs"] == 0 and d["labels"] == {} and "last_heartbeat" not in d
    page = as_dict(cpb.ListJobsPage(jobs=[cpb.Job(job_id="j", attempt=3)], total_elements=7))
    assert page["total_elements"] == 7 and page["jobs"][0]["attempt"] == 3 and "exit_code" not in page["jobs"][0]
    assert as_dict(cpb.Job(exit_code=0))["exit_code"] == 0  # set to zero: present


def test_config_file_round_trips_with_mode_0600_and_refuses_unknown_keys(tmp_path: Path) -> None:
    p = tmp_path / "gpufleet" / "config.toml"
    cfg = config.Config(current_context="a", contexts={
        "a": config.Context(coordinator="h:1", tls_ca='/x/"q".crt'), "b c": config.Context(token="gft_x")})
    config.save(cfg, p)
    assert p.stat().st_mode & 0o777 == 0o600
    assert config.load(p) == cfg
    p.write_text('[contexts.a]\ncoordinatr = "h:1"\n')
    with pytest.raises(ValueError, match="unknown key.*coordinatr"):
        config.load(p)


def test_a_flag_or_variable_beats_the_context_which_beats_the_default(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "config.toml"
    token = tmp_path / "token"
    token.write_text("gft_from_file\n")
    config.save(config.Config(current_context="a", contexts={
        "a": config.Context(coordinator="ctx-host", token_file=str(token)),
        "b": config.Context(coordinator="b:2", token="gft_b")}), p)
    monkeypatch.setenv("GPUFLEET_CLI_CONFIG", str(p))
    settings.store()
    ctx = settings.resolve(env={})
    assert (ctx.coordinator, ctx.token, ctx.output) == ("ctx-host:50050", "gft_from_file", "table")
    settings.store(coordinator="flag:3", context="b", output="json")
    ctx = settings.resolve(env={"GPUFLEET_TOKEN": "gft_env"})
    assert (ctx.coordinator, ctx.token, ctx.output) == ("flag:3", "gft_env", "json")
    settings.store(context="b")
    assert settings.resolve(env={}).token == "gft_b"
    settings.store(context="nope")
    with pytest.raises(typer.BadParameter, match="no context 'nope'"):
        settings.resolve(env={})
    monkeypatch.setenv("GPUFLEET_CLI_CONFIG", str(tmp_path / "none.toml"))
    settings.store()
    assert settings.resolve(env={}).coordinator == settings.DEFAULT_COORDINATOR


def test_shell_completion_is_enabled() -> None:
    env = {**os.environ, "_GPUFLEET_COMPLETE": "complete_bash", "COMP_WORDS": "gpufleet jobs li", "COMP_CWORD": "2"}
    r = subprocess.run([sys.executable, "-m", "gpufleet.cli"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["list"]
    shown = subprocess.run([sys.executable, "-m", "gpufleet.cli", "--show-completion", "bash"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "_GPUFLEET_COMPLETE" in shown.stdout


@pytest.mark.parametrize("daemon", ["gpufleet.agent.main", "gpufleet.coordinator.main"])
def test_daemon_help_names_each_default_once(daemon: str) -> None:
    r = subprocess.run([sys.executable, "-P", "-m", daemon, "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    options = text.split(" --")
    assert all(o.count("(default:") <= 1 for o in options), [o for o in options if o.count("(default:") > 1]
    assert "(default: )" not in text


def test_log_lines_survive_chunks_that_end_mid_line_or_mid_character() -> None:
    from gpufleet.cli.jobs import LineSplitter

    s = LineSplitter()
    data = "épo\nch 1\nlast".encode()
    got = [line for i in range(len(data)) for line in s.feed(data[i:i + 1])]  # one byte at a time
    assert got == ["épo", "ch 1"] and s.close() == ["last"] and s.done == ["épo", "ch 1"]


def test_login_reads_a_token_from_stdin_into_a_private_config(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env["GPUFLEET_CLI_CONFIG"] = str(conf)

    def login(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpufleet.cli", "login", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=60)

    r = login("--token", "-")
    assert r.returncode == 2 and "--coordinator" in r.stderr and not conf.exists()
    r = login("--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", "k", "--coordinator", "h")
    assert r.returncode == 2 and "no such file" in r.stderr and not conf.exists()
    r = login("--coordinator", "coord.example", "--token", "-", "--context", "prod", stdin="gft_secret\n")
    assert r.returncode == 0, r.stderr
    assert conf.stat().st_mode & 0o777 == 0o600
    saved = config.load(conf)
    assert saved.current_context == "prod"
    assert saved.contexts["prod"] == config.Context(coordinator="coord.example:50050", token="gft_secret")
