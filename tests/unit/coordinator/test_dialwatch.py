"""A node's TLS problem is kept until a call to it succeeds again, and only TLS problems are kept."""
from __future__ import annotations

import grpc
from gpufleet.coordinator.dialwatch import DialProblems, tls_problem

ADDR = "10.0.0.7:50051"
HOSTNAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:50051: Custom verification "
            "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.")


def test_a_refused_certificate_is_kept_until_a_call_reaches_the_agent() -> None:
    p = DialProblems()
    p.outcome(ADDR, grpc.StatusCode.UNAVAILABLE, HOSTNAME)
    assert "Hostname Verification Check failed" in p.get(ADDR) and ADDR in p.get(ADDR)
    p.outcome(ADDR, grpc.StatusCode.DEADLINE_EXCEEDED, "")  # did not reach it: nothing learnt
    assert p.get(ADDR)
    p.outcome(ADDR, grpc.StatusCode.NOT_FOUND, "no job x")  # the agent answered: its certificate passed
    assert p.get(ADDR) == "" and p.get("other:1") == ""


def test_only_tls_failures_are_problems() -> None:
    assert tls_problem(grpc.StatusCode.UNAVAILABLE, "connection refused", ADDR) is None
    assert tls_problem(grpc.StatusCode.PERMISSION_DENIED, HOSTNAME, ADDR) is None
    other_ca = "Tls handshake failed (TSI_PROTOCOL_FAILURE): ... CERTIFICATE_VERIFY_FAILED: unable to get local issuer"
    assert "--tls-ca" in (tls_problem(grpc.StatusCode.UNAVAILABLE, other_ca, ADDR) or "")
