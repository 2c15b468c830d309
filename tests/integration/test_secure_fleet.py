"""A fleet as the README sets it up: certificates from `gpufleet certs`, a token from `gpufleet
tokens`, coordinator and agent over mTLS, and the CLI with a client certificate and the token."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import AgentProc, CoordinatorProc, free_port, wait_for


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufleet.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_certs_tokens_and_an_mtls_fleet(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    r = cli("-o", "json", "certs", "init", str(ca))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["role"] in ("", "ca", None) or (ca / "ca.crt").exists()
    for name, role in (("coordinator", "coordinator"), ("gpu01", "agent"), ("ops", "client")):
        r = cli("-o", "json", "certs", "issue", name, "--role", role, "--host", "127.0.0.1", "--ca-dir", str(ca),
                "--out-dir", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["role"] == role
    state = tmp_path / "c" / "state"
    r = cli("-o", "json", "tokens", "create", "alice", "--role", "admin", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["token"]
    assert token.startswith("gft_")
    listed = json.loads(cli("-o", "json", "tokens", "list", "--state-dir", str(state)).stdout)
    assert [t["name"] for t in listed] == ["alice"] and token not in json.dumps(listed)

    def tls(name: str) -> list[str]:
        d = tmp_path / name
        return ["--tls-cert", str(d / f"{name}.crt"), "--tls-key", str(d / f"{name}.key"),
                "--tls-ca", str(d / "ca.crt")]

    c = CoordinatorProc(tmp_path / "c", extra=tls("coordinator"), port=free_port())
    c.daemon.start()
    a = AgentProc(tmp_path / "a", node_name="gpu01", extra=[*tls("gpu01"), "--coordinator", c.addr])
    a.daemon.start()
    try:
        client = {"GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TLS_CA": str(tmp_path / "ops" / "ca.crt"),
                  "GPUFLEET_TLS_CERT": str(tmp_path / "ops" / "ops.crt"),
                  "GPUFLEET_TLS_KEY": str(tmp_path / "ops" / "ops.key")}

        def nodes(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return cli("-o", "json", "nodes", "list", env={**client, **extra_env})

        ok = wait_for(lambda: (r := nodes({"GPUFLEET_TOKEN": token})).returncode == 0
                      and json.loads(r.stdout).get("nodes") and r, 60, "agent registered over mTLS")
        assert [n["name"] for n in json.loads(ok.stdout)["nodes"]] == ["gpu01"]
        no_token = nodes({})
        assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
        assert cli("tokens", "revoke", "alice", "--state-dir", str(state)).returncode == 0
        refused = wait_for(lambda: (r := nodes({"GPUFLEET_TOKEN": token})).returncode == 1 and r, 30,
                           "revoked token refused")
        assert "UNAUTHENTICATED" in refused.stderr
        plain = cli("-o", "json", "nodes", "list", env={"GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TOKEN": token})
        assert plain.returncode == 1  # no client certificate: the TLS handshake itself refuses
    finally:
        a.kill()
        c.kill()
