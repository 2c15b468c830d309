"""A fleet as the README sets it up: certificates from `gpufleet certs`, the first admin token from
`gpufleet-coordinator tokens` on the coordinator host, more tokens over the Coordinator API with
`gpufleet tokens`, coordinator and agent over mTLS, and the CLI with a client certificate and a token."""
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


def coordinator_tokens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "gpufleet.coordinator.main", "tokens", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_bootstrap_refuses_a_missing_database(tmp_path: Path) -> None:
    r = coordinator_tokens("create", "root", "--role", "admin", "--state-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no coordinator database at" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "nowhere").exists()


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
    def tls(name: str) -> list[str]:
        d = tmp_path / name
        return ["--tls-cert", str(d / f"{name}.crt"), "--tls-key", str(d / f"{name}.key"),
                "--tls-ca", str(d / "ca.crt")]

    c = CoordinatorProc(tmp_path / "c", extra=tls("coordinator"), port=free_port())
    c.daemon.start()
    state = tmp_path / "c" / "state"
    # Bootstrap on the coordinator host: the first admin token, against the coordinator's own database.
    boot = wait_for(lambda: (r := coordinator_tokens("create", "root", "--role", "admin", "--state-dir", str(state),
                                                     "-o", "json")).returncode == 0 and r, 60,
                    "first admin token minted on the coordinator host")
    root = json.loads(boot.stdout)["token"]
    assert root.startswith("gft_")
    a = AgentProc(tmp_path / "a", node_name="gpu01", extra=[*tls("gpu01"), "--coordinator", c.addr])
    a.daemon.start()
    try:
        client = {"GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TLS_CA": str(tmp_path / "ops" / "ca.crt"),
                  "GPUFLEET_TLS_CERT": str(tmp_path / "ops" / "ops.crt"),
                  "GPUFLEET_TLS_KEY": str(tmp_path / "ops" / "ops.key")}

        admin = {**client, "GPUFLEET_TOKEN": root}
        r = cli("-o", "json", "tokens", "create", "alice", "--role", "user", env=admin)  # over the API
        assert r.returncode == 0, r.stderr
        token = json.loads(r.stdout)["token"]
        assert token.startswith("gft_") and json.loads(r.stdout)["role"] == "user"
        listed = json.loads(cli("-o", "json", "tokens", "list", env=admin).stdout)["items"]
        assert sorted(t["name"] for t in listed) == ["alice", "root"] and token not in json.dumps(listed)
        denied = cli("tokens", "list", env={**client, "GPUFLEET_TOKEN": token})
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr  # admin only, reads included

        def nodes(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return cli("-o", "json", "nodes", "list", env={**client, **extra_env})

        ok = wait_for(lambda: (r := nodes({"GPUFLEET_TOKEN": token})).returncode == 0
                      and json.loads(r.stdout).get("items") and r, 60, "agent registered over mTLS")
        assert [n["name"] for n in json.loads(ok.stdout)["items"]] == ["gpu01"]
        no_token = nodes({})
        assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
        # `gpufleet login` saves all of it once; later commands need no variables.
        (tmp_path / "alice.token").write_text(token + "\n")
        saved = {"GPUFLEET_CLI_CONFIG": str(tmp_path / "home" / "config.toml")}
        r = cli("login", *tls("ops"), "--coordinator", c.addr, "--token-file", str(tmp_path / "alice.token"),
                "--context", "secure", env=saved)
        assert r.returncode == 0, r.stderr
        r = cli("nodes", "list", "-o", "json", env=saved)
        assert r.returncode == 0 and [n["name"] for n in json.loads(r.stdout)["items"]] == ["gpu01"], r.stderr
        revoked = cli("tokens", "revoke", "alice", env=admin)
        assert revoked.returncode == 0, revoked.stderr
        refused = nodes({"GPUFLEET_TOKEN": token})  # at once on the coordinator that revoked
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        plain = cli("-o", "json", "nodes", "list", env={"GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TOKEN": token})
        assert plain.returncode == 1 and "TLS handshake refused" in plain.stderr  # not "nothing listens"
        no_cert = cli("nodes", "list", env={"GPUFLEET_COORDINATOR": c.addr, "GPUFLEET_TOKEN": token,
                                            "GPUFLEET_TLS_CA": str(tmp_path / "ops" / "ca.crt")})
        assert no_cert.returncode == 1 and "give a client certificate (--tls-cert/--tls-key" in no_cert.stderr
    finally:
        a.kill()
        c.kill()


def test_certs_issue_out_force_and_an_agent_whose_certificate_misses_its_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert cli("certs", "init", str(ca)).returncode == 0
    tls_dir = tmp_path / "etc" / "tls"
    issue = ["certs", "issue", "gpu01", "--role", "agent", "--ca-dir", str(ca), "--out", str(tls_dir)]
    r = cli(*issue)  # no --host: the certificate names only "gpu01"
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tls_dir.iterdir()) == ["agent.crt", "agent.key", "ca.crt"]
    again = cli(*issue)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
    state = tmp_path / "agent-state"
    agent = subprocess.run(
        [sys.executable, "-P", "-m", "gpufleet.agent.main", "--listen", f"127.0.0.1:{free_port()}",
         "--state-dir", str(state), "--runtime", "process", "--gpus", "fake:1", "--metrics-listen", "",
         "--output-root", str(tmp_path / "o"), "--data-root", str(tmp_path / "d"),
         "--coordinator", f"127.0.0.1:{free_port()}", "--tls-cert", str(tls_dir / "agent.crt"),
         "--tls-key", str(tls_dir / "agent.key"), "--tls-ca", str(tls_dir / "ca.crt")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert agent.returncode == 2, agent.stderr
    assert "does not name '127.0.0.1'" in agent.stderr and "--host 127.0.0.1" in agent.stderr
    assert "Traceback" not in agent.stderr and not state.exists()  # refused before creating anything
    forced = cli(*issue, "--host", "127.0.0.1", "--force")
    assert forced.returncode == 0, forced.stderr
