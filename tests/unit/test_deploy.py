"""Deployment files: systemd units verify, and the daemons speak sd_notify."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import sdnotify
from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = ["gpufleet-agent.service", "gpufleet-coordinator.service"]


def _installed(unit_text: str) -> str:
    """The unit as installed from this virtualenv (verify checks that ExecStart binaries exist)."""
    bindir = Path(sys.executable).parent
    for name in ("gpufleet-agent", "gpufleet-coordinator"):
        unit_text = unit_text.replace(f"/usr/local/bin/{name}", str(bindir / name))
    return unit_text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_verifies(unit: str, tmp_path: Path) -> None:
    path = tmp_path / unit
    path.write_text(_installed((ROOT / "deploy/systemd" / unit).read_text()))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_notify_with_watchdog_and_hardening(unit: str) -> None:
    text = (ROOT / "deploy/systemd" / unit).read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert line in text, f"{unit} lacks {line}"
    if unit == "gpufleet-agent.service":
        # Process-runtime jobs must survive an agent restart.
        assert "KillMode=process" in text and "docker.service" in text


def test_sd_notify_sends_a_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(sock_path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
        assert sdnotify.notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")


@pytest.mark.parametrize("daemon", ["agent", "coordinator"])
def test_daemon_reports_ready_to_systemd(daemon: str, tmp_path: Path) -> None:
    """The real daemon sends READY=1 (and WATCHDOG=1 pings) to a fake notify socket."""
    sock_path = tmp_path / "n.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(60)
    port = free_port()
    args = [sys.executable, "-m", f"{daemon}.main", "--listen", f"127.0.0.1:{port}", "--state-dir",
            str(tmp_path / "state"), "--metrics-listen", "127.0.0.1:0"]
    if daemon == "agent":
        args += ["--runtime", "process", "--gpus", "fake:1", "--output-root", str(tmp_path / "o"),
                 "--data-root", str(tmp_path / "d")]
    env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got: list[bytes] = []
        while b"WATCHDOG=1" not in got:
            got.append(s.recv(200))
        assert any(m.startswith(b"READY=1") for m in got)
        assert got.index(b"WATCHDOG=1") > next(i for i, m in enumerate(got) if m.startswith(b"READY=1"))
    finally:
        p.terminate()
        p.wait(20)
        s.close()
