"""The CLI tells apart why a server cannot be reached (gpufleet.cli.reach), from gRPC's real details."""
from __future__ import annotations

import pytest

from gpufleet.cli.reach import is_connection_failure, unreachable, with_default_port

ADDR = "127.0.0.1:50050"
CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50050: Socket closed"
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to "
           "remote host: Connection refused")
HOSTNAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50050: Custom verification "
            "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.")


@pytest.mark.parametrize("details, ca, cert, needle", [
    (REFUSED, "", "", "nothing listens at 127.0.0.1:50050"),
    (CLOSED, "", "", "TLS handshake refused at 127.0.0.1:50050: it serves mTLS; give the fleet CA"),
    (CLOSED, "ca.crt", "", "TLS handshake refused at 127.0.0.1:50050: give a client certificate (--tls-cert/--tls-key"),
    (CLOSED, "ca.crt", "ops.crt", "did not accept the client certificate ops.crt"),
    (HOSTNAME, "ca.crt", "ops.crt", "does not name '127.0.0.1'"),
    ("failed to connect to all addresses; something new", "", "", "cannot reach 127.0.0.1:50050"),
])
def test_each_failure_has_its_own_message(details: str, ca: str, cert: str, needle: str) -> None:
    assert is_connection_failure(details)
    assert needle in unreachable(ADDR, details, ca, cert)


def test_an_unavailable_answer_from_a_server_is_not_a_connection_failure() -> None:
    assert not is_connection_failure("the coordinator's database is unavailable; try again")


def test_a_coordinator_without_a_port_gets_the_default_port_not_443() -> None:
    assert with_default_port("localhost") == "localhost:50050"
    assert with_default_port("[::1]") == "[::1]:50050"
    assert with_default_port("coord.example:6000") == "coord.example:6000"
