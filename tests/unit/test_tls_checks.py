"""`certs issue` safety and the agent's start-up check (gpufleet.tls): role-named files for the deploy
paths, no silent overwrite, and a certificate that must name the address peers dial."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet import tls
from gpufleet.errors import FailedPrecondition, InvalidArgument


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    tls.init_ca(d)
    return d


def test_issue_with_a_stem_writes_the_deploy_file_names(ca: Path, tmp_path: Path) -> None:
    crt, key = tls.issue(ca, tmp_path / "tls", "gpu01", "agent", ["127.0.0.1"], stem="agent")
    assert (crt.name, key.name) == ("agent.crt", "agent.key")
    assert (tmp_path / "tls" / "ca.crt").is_file()
    assert tls.describe(crt).name == "gpu01"  # the file is named by role, the certificate by node


def test_issue_refuses_to_overwrite_unless_forced(ca: Path, tmp_path: Path) -> None:
    crt, key = tls.issue(ca, tmp_path / "n", "gpu01", "agent")
    before = (crt.read_bytes(), key.read_bytes())
    with pytest.raises(FailedPrecondition, match="--force"):
        tls.issue(ca, tmp_path / "n", "gpu01", "agent")
    assert (crt.read_bytes(), key.read_bytes()) == before
    tls.issue(ca, tmp_path / "n", "gpu01", "agent", force=True)
    assert crt.read_bytes() != before[0] and key.read_bytes() != before[1]


@pytest.mark.parametrize("address, ok", [
    ("127.0.0.1:50051", True), ("gpu01.example.com:50051", True), ("GPU01.example.com.:1", True),
    ("[::1]:50051", True), ("gpu01:50051", True),  # the name itself is always a SAN
    ("10.0.0.9:50051", False), ("localhost:50051", False), ("0.0.0.0:50051", False),
])
def test_check_names_address(ca: Path, tmp_path: Path, address: str, ok: bool) -> None:
    crt, _ = tls.issue(ca, tmp_path, "gpu01", "agent", ["127.0.0.1", "gpu01.example.com", "::1"])
    if ok:
        tls.check_names_address(crt, address)
        return
    with pytest.raises(InvalidArgument, match="--advertise") as exc:
        tls.check_names_address(crt, address)
    assert "certs issue gpu01 --role agent --host" in str(exc.value)
