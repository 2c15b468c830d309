"""Issue 13: systemd units an admin would sign off, and the accounts they name exist by sysusers.d."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
LIMITS = {"gpufleet-agent.service": 5.0, "gpufleet-coordinator.service": 3.0}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", sorted(LIMITS))
def test_exposure_is_within_the_limit(unit: str) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNITS / unit)], capture_output=True,
                       text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= LIMITS[unit], r.stdout


def test_sysusers_creates_every_account_the_units_and_the_agent_use() -> None:
    conf = (UNITS / "sysusers.d" / "gpufleet.conf").read_text()
    accounts = {line.split()[1] for line in conf.splitlines() if line.startswith("u ")}
    assert {"gpufleet", "gpufleet-job"} <= accounts
    for unit in LIMITS:
        for user in re.findall(r"^User=(\S+)$", (UNITS / unit).read_text(), re.M):
            assert user in accounts, (unit, user)
    from gpufleet.agent.jobuser import DEFAULT_JOB_USER

    assert DEFAULT_JOB_USER in accounts


def test_units_keep_what_the_agent_needs_and_drop_the_rest() -> None:
    agent = (UNITS / "gpufleet-agent.service").read_text()
    for line in ("KillMode=process", "DevicePolicy=closed", "DeviceAllow=char-nvidia rw", "Delegate=yes",
                 "ReadWritePaths=-/run/docker.sock", "StateDirectoryMode=0700", "NoNewPrivileges=yes"):
        assert line in agent, line
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", agent, re.M)
    assert bounding and "CAP_SYS_ADMIN" not in bounding.group(1) and "CAP_NET_ADMIN" not in bounding.group(1)
    coord = (UNITS / "gpufleet-coordinator.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=$", coord, re.M) and "User=gpufleet" in coord
