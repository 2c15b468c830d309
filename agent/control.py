"""Who may control an agent that serves plaintext (loopback, or --insecure): never just anyone local.

Without TLS there is no certificate to check, and any local account can open a TCP connection to
127.0.0.1. So every gpufleet.v1.Agent call (health and reflection stay open) must come from

- a local process of root or of the agent's own user, judged by the kernel: the caller's socket is
  looked up in /proc/net/tcp{,6} by its address and port (the peer credential of a TCP connection),
  and its owner's uid must be 0 or the agent's; or
- a caller that presents the agent's control secret as `x-gpufleet-agent-secret` metadata. The
  secret is random, made at each start, and written 0600 to <state-dir>/control.secret, so only
  root and the agent's user can read it (`gpufleet agent status` run by them).

A caller that is not a local process (its socket is not in this network namespace) reached an agent
that was told `--insecure` on a non-loopback address: that is the admin's explicit choice and is
allowed as before (mTLS is the way to secure a remote agent). With mTLS, AgentAuth (gpufleet.auth)
checks certificates instead and this interceptor is not installed.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import struct
from pathlib import Path
from typing import Any

import grpc

from gpufleet import auth
from gpufleet.agentsecret import SECRET_FILE as SECRET_FILE
from gpufleet.agentsecret import SECRET_HEADER as SECRET_HEADER
from gpufleet.agentsecret import SecretInterceptor as SecretInterceptor
from gpufleet.agentsecret import read_secret as read_secret
from gpufleet.agentsecret import secret_from as secret_from
from gpufleet.agentsecret import secret_metadata as secret_metadata

log = logging.getLogger("gpufleet.agent")

AGENT_SERVICE = "gpufleet.v1.Agent"


def write_secret(state_dir: Path) -> str:
    """A fresh secret in <state-dir>/control.secret (0600, written before the server starts)."""
    value = secrets.token_urlsafe(32)
    path = state_dir / SECRET_FILE
    tmp = state_dir / (SECRET_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return value


def _proc_hex(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order, upper-case hex."""
    packed = ip.packed
    return "".join(f"{struct.unpack('=I', packed[i:i + 4])[0]:08X}" for i in range(0, len(packed), 4))


def parse_peer(peer: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """gRPC's context.peer() ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") as (address, port)."""
    kind, _, rest = peer.partition(":")
    try:
        if kind == "ipv4":
            host, _, port = rest.rpartition(":")
            return ipaddress.IPv4Address(host), int(port)
        if kind == "ipv6":
            host, _, port = rest.rpartition(":")
            addr = ipaddress.IPv6Address(host.strip("[]").split("%")[0])
            return (addr.ipv4_mapped or addr), int(port)
    except ValueError:
        return None
    return None


def socket_owner(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, server_port: int) -> int | None:
    """The uid owning the local TCP socket bound to addr:port and connected to our server_port, or
    None when no such socket is in this network namespace (the caller is on another host)."""
    forms: list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]] = (
        [("/proc/net/tcp", addr)] if addr.version == 4 else [])
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d in tcp6.
    forms.append(("/proc/net/tcp6", addr if addr.version == 6 else ipaddress.IPv6Address(f"::ffff:{addr}")))
    for table, form in forms:
        want_local = f"{_proc_hex(form)}:{port:04X}"
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == want_local and fields[2].endswith(f":{server_port:04X}"):
                        return int(fields[7])
        except OSError:
            continue
    return None


class LocalControl(grpc.ServerInterceptor):
    """Agent calls over plaintext: local callers must be root or the agent's user, or hold the secret."""

    def __init__(self, secret: str, allow_remote: bool) -> None:
        self.secret = secret
        self._secret = secret.encode()
        self.allow_remote = allow_remote
        self.server_port = 0  # set once bound
        self.allowed_uids = {0, os.geteuid()}

    def _has_secret(self, context: grpc.ServicerContext) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key.lower() == SECRET_HEADER:
                given = value if isinstance(value, bytes) else str(value).encode()
                return hmac.compare_digest(given, self._secret)
        return False

    def judge(self, peer: str, context: grpc.ServicerContext) -> tuple[bool, str]:
        if self._has_secret(context):
            return True, ""
        parsed = parse_peer(peer)
        if parsed is None:
            return False, f"caller {peer!r} is neither a TCP peer nor holds the control secret"
        uid = socket_owner(parsed[0], parsed[1], self.server_port)
        if uid is None:
            if self.allow_remote and not parsed[0].is_loopback:
                return True, ""  # --insecure on a public address: the admin's choice
            return False, "the caller's socket was not found in this host's TCP table"
        if uid in self.allowed_uids:
            return True, ""
        return False, f"local uid {uid} is neither root nor the agent's user"

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        service, method = auth._split(handler_call_details.method)
        if handler is None or service != AGENT_SERVICE:
            return handler  # health and reflection stay open
        full = f"{service}/{method}"

        def check(request: Any, context: grpc.ServicerContext) -> None:
            ok, why = self.judge(context.peer(), context)
            if not ok:
                auth._deny(context, grpc.StatusCode.PERMISSION_DENIED,
                           f"{full}: {why}; present the agent's control secret ({SECRET_HEADER}, from "
                           f"<state-dir>/{SECRET_FILE}) or use mTLS", method=full)

        return auth._wrap(handler, check)
