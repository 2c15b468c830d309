"""Starting the daemons as an operator would: unsafe or broken settings are refused, clearly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import free_port


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def agent_args(tmp: Path, listen: str, *extra: str) -> list[str]:
    return ["gpufleet.agent.main", "--listen", listen, "--state-dir", str(tmp / "s"), "--runtime", "process",
            "--gpus", "fake:1", "--output-root", str(tmp / "o"), "--data-root", str(tmp / "d"),
            "--metrics-listen", "", *extra]


@pytest.mark.parametrize("daemon", ["agent", "coordinator"])
def test_plaintext_on_a_public_address_is_refused(daemon: str, tmp_path: Path) -> None:
    listen = f"0.0.0.0:{free_port()}"
    args = (agent_args(tmp_path, listen) if daemon == "agent"
            else ["gpufleet.coordinator.main", "--listen", listen, "--state-dir", str(tmp_path / "c"),
                  "--metrics-listen", ""])
    r = run(args)
    assert r.returncode == 2
    assert "--listen" in r.stderr and "TLS" in r.stderr and "--insecure" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--gpus", "fake:0"], "--gpus"),
    (["--runtime", "podman"], "--runtime"),
    (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "--tls-ca"),
])
def test_bad_agent_flags_exit_2_naming_the_flag(flags: list[str], needle: str, tmp_path: Path) -> None:
    r = run(agent_args(tmp_path, f"127.0.0.1:{free_port()}", *flags))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_config_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('listen = "127.0.0.1:1"\nno_such_setting = 3\n')
    r = run(["gpufleet.agent.main", "--config", str(cfg)])
    assert r.returncode == 2 and "no_such_setting" in r.stderr


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    import os

    args = [a for a in agent_args(tmp_path, f"127.0.0.1:{free_port()}") if a not in ("--runtime", "process")]
    env = {**os.environ, "GPUFLEET_RUNTIME": "podman"}
    r = subprocess.run([sys.executable, "-P", "-m", *args], capture_output=True, text=True, timeout=30, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "--runtime" in r.stderr and "podman" in r.stderr


@pytest.mark.parametrize("daemon, flags, needle", [
    ("agent", ["--runtime", "podman"], "--runtime"),
    ("agent", ["--gpus", "fake:0"], "--gpus"),
    ("agent", ["--gpu-exclusivity", "sometimes"], "--gpu-exclusivity"),
    ("agent", ["--orphan-grace", "-1"], "--orphan-grace"),
    ("agent", ["--log-level", "chatty"], "--log-level"),
    ("agent", ["--advertise", "no-port"], "--advertise"),
    ("coordinator", ["--auth", "maybe"], "--auth"),
    ("coordinator", ["--on-restart", "forget"], "--on-restart"),
    ("coordinator", ["--log-level", "chatty"], "--log-level"),
    ("coordinator", ["--schedule-interval", "0"], "--schedule-interval"),
])
def test_a_bad_flag_leaves_nothing_on_disk(daemon: str, flags: list[str], needle: str, tmp_path: Path) -> None:
    """Refused before the store, the database or any folder is made (issue 17): fixing the flag and
    starting again meets no half-made state dir with the wrong owner or mode."""
    listen = f"127.0.0.1:{free_port()}"
    args = (agent_args(tmp_path, listen, *flags) if daemon == "agent"
            else ["gpufleet.coordinator.main", "--listen", listen, "--state-dir", str(tmp_path / "s"),
                  "--metrics-listen", "", *flags])
    r = run(args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())  # no state, output, data
