"""A test fleet CA on disk: certificates for the coordinator, agents and clients, as
`gpufleet certs init/issue` make them, and the flags, credentials and CLI variables that use them.

With `--auth on` the coordinator's Fleet service takes only mTLS (issue 13), so every test that runs
agents under tokens runs them with certificates from here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from gpufleet import tls


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.crt"

    def cert(self, name: str) -> tuple[Path, Path]:
        d = self.root / name
        return d / f"{name}.crt", d / f"{name}.key"

    def issue(self, name: str, role: str, hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        tls.issue(self.root / "ca", self.root / name, name, role, list(hosts))

    def flags(self, name: str) -> list[str]:
        crt, key = self.cert(name)
        return ["--tls-cert", str(crt), "--tls-key", str(key), "--tls-ca", str(self.ca)]

    def creds(self, name: str) -> grpc.ChannelCredentials:
        crt, key = self.cert(name)
        return tls.channel_credentials(self.ca, crt, key)

    def cli_env(self, name: str) -> dict[str, str]:
        crt, key = self.cert(name)
        return {"GPUFLEET_TLS_CA": str(self.ca), "GPUFLEET_TLS_CERT": str(crt), "GPUFLEET_TLS_KEY": str(key)}


def make_pki(root: Path, agents: tuple[str, ...] = (), clients: tuple[str, ...] = ("ops",)) -> Pki:
    """A CA with a `coordinator` certificate, one per agent (role agent, its node name) and one per
    client, all naming 127.0.0.1."""
    pki = Pki(root)
    tls.init_ca(root / "ca")
    pki.issue("coordinator", "coordinator")
    for name in agents:
        pki.issue(name, "agent")
    for name in clients:
        pki.issue(name, "client")
    return pki
