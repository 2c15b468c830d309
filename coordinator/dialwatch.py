"""Why the coordinator cannot talk to a node although the node talks to it: TLS verification failures
seen on the coordinator's own calls to an agent, kept per address until a call succeeds again.

Without this, an agent whose certificate does not name its advertised address shows READY (its
heartbeats arrive) while every Launch fails its handshake: jobs hang and only the coordinator's log
says why. `nodes show`/`nodes list` show the recorded problem on the node instead (issue 17).
Kept in memory: the next failed call after a restart records it again within a pass.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from gpufleet.log import event

log = logging.getLogger("gpufleet.coordinator.dialwatch")

# What grpc's C core says when it rejects the peer's certificate, and what to tell the operator.
_TLS_FAILURES = (
    ("Hostname Verification Check failed",
     "its certificate does not name the address it advertised; reissue it with `gpufleet certs issue NODE "
     "--role agent --host HOST` (HOST as in the address), or advertise an address it names"),
    ("CERTIFICATE_VERIFY_FAILED",
     "its certificate is not signed by the coordinator's --tls-ca (or has expired); issue it from the fleet CA"),
    ("certificate verify failed", "its certificate failed verification against the coordinator's --tls-ca"),
    ("Handshake failed", "the TLS handshake failed (is it serving TLS with a certificate from the fleet CA?)"),
    ("handshake failed", "the TLS handshake failed (is it serving TLS with a certificate from the fleet CA?)"),
)


def tls_problem(code: grpc.StatusCode | None, details: str, address: str) -> str | None:
    """The line to show on a node for a failed call to `address`, or None when the failure is not about
    its certificate (an agent that is down is already shown by its missing heartbeats). Pure."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    for needle, advice in _TLS_FAILURES:
        if needle in details:
            return f"TLS: the coordinator's call to {address} was refused: {needle}: {advice}"
    return None


class DialProblems:
    """Address -> the last TLS problem of a call to it; cleared by the next call that succeeds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_address: dict[str, str] = {}

    def get(self, address: str) -> str:
        with self._lock:
            return self._by_address.get(address, "")

    def outcome(self, address: str, code: grpc.StatusCode | None, details: str) -> None:
        """Record what one call to `address` ended with (code None or OK: it reached the agent)."""
        reached = code is None or code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                               grpc.StatusCode.CANCELLED)
        problem = tls_problem(code, details, address)
        with self._lock:
            before = self._by_address.get(address, "")
            if problem:
                self._by_address[address] = problem
            elif reached:
                self._by_address.pop(address, None)
        if problem and problem != before:  # log changes only, not every pass
            event(log, "agent.tls_refused", logging.ERROR, address=address, problem=problem)
        elif reached and before:
            event(log, "agent.tls_ok", address=address)

    def interceptor(self, address: str) -> DialWatch:
        return DialWatch(self, address)


class DialWatch(grpc.UnaryUnaryClientInterceptor):
    """Reports the outcome of every unary call (blocking or future) on one agent's channel (the
    scheduler's Launch and the reconciler's passes are unary: they find a bad certificate first)."""

    def __init__(self, problems: DialProblems, address: str) -> None:
        self.problems = problems
        self.address = address

    def _done(self, fut: Any) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is None:
            self.problems.outcome(self.address, None, "")
        elif isinstance(exc, grpc.RpcError):
            self.problems.outcome(self.address, exc.code(), exc.details() or "")  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = continuation(client_call_details, request)
        call.add_done_callback(self._done)
        return call
