"""The agent's control secret, as its clients carry it (the coordinator, `gpufleet agent status`).

A plaintext agent requires it on every call from anyone who is not root or its own user (see
gpufleet/agent/control.py for the server side); the agent sends it to the coordinator with Register.
Shared, so the coordinator and the CLI need nothing of the agent's code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from gpufleet import auth

SECRET_HEADER = "x-gpufleet-agent-secret"
SECRET_FILE = "control.secret"


def read_secret(state_dir: Path | str) -> str:
    """The running agent's secret (for clients that may read it: root, the agent's user)."""
    return (Path(state_dir) / SECRET_FILE).read_text().strip()


class SecretInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Client side: every call carries the agent's control secret (the coordinator, `agent status`)."""

    def __init__(self, secret: str) -> None:
        self._md = (SECRET_HEADER, secret)

    def _details(self, d: Any) -> Any:
        md = [m for m in (d.metadata or ()) if m[0].lower() != SECRET_HEADER] + [self._md]
        return auth._CallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def __repr__(self) -> str:  # never print the secret
        return "SecretInterceptor(<secret>)"


def secret_from(metadata: Any) -> str:
    """The control secret an agent sent with Register ("" when none)."""
    for key, value in metadata or ():
        if key.lower() == SECRET_HEADER:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return text.strip()[:256]
    return ""


def secret_metadata(state_dir: Path | str) -> list[tuple[str, str]]:
    """Metadata for a client that can read the agent's state dir; [] when it cannot."""
    try:
        return [(SECRET_HEADER, read_secret(state_dir))]
    except OSError:
        return []

