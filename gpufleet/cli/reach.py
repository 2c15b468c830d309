"""Why a coordinator or agent cannot be reached, in one line an operator can act on.

gRPC reports every connection failure as UNAVAILABLE; its details tell apart nothing listening,
a name that does not resolve, a server certificate that does not match, and a TLS handshake the
server refused (usually: no client certificate for an mTLS coordinator).
"""
from __future__ import annotations

HANDSHAKE_REFUSED = ("Socket closed", "Connection reset", "handshake", "Handshake", "tlsv1 alert",
                     "TLSV1_ALERT", "WRONG_VERSION_NUMBER")


def is_connection_failure(details: str) -> bool:
    """UNAVAILABLE from the transport (no connection), not from a server that answered it."""
    return "failed to connect" in details or "Socket closed" in details or "Connection reset" in details \
        or "DNS resolution failed" in details


def unreachable(address: str, details: str, tls_ca: str, client_cert: str) -> str:
    """The message for an UNAVAILABLE call to `address` with gRPC's `details`."""
    host = address.rpartition(":")[0] or address
    if "Connection refused" in details:
        return f"nothing listens at {address}: is the service running there, on that port?"
    if "DNS resolution failed" in details or "Name or service not known" in details:
        return f"cannot resolve {host!r} ({details})"
    if "Hostname Verification" in details:
        return (f"TLS: the server's certificate at {address} does not name {host!r}; dial an address it names "
                f"or reissue it with `gpufleet certs issue NAME --role ROLE --host {host} --force`")
    if "certificate verify failed" in details or "CERTIFICATE_VERIFY_FAILED" in details:
        return f"TLS: the server's certificate at {address} is not signed by --tls-ca {tls_ca} ({details})"
    if any(s in details for s in HANDSHAKE_REFUSED):
        if not tls_ca:
            return (f"TLS handshake refused at {address}: it serves mTLS; give the fleet CA and a client "
                    "certificate (--tls-ca, --tls-cert/--tls-key, or GPUFLEET_TLS_CA/_CERT/_KEY)")
        if not client_cert:
            return (f"TLS handshake refused at {address}: give a client certificate (--tls-cert/--tls-key; "
                    "`gpufleet certs issue NAME --role client`)")
        return (f"TLS handshake refused at {address}: the server did not accept the client certificate "
                f"{client_cert} (another CA's, expired, or not yet valid?)")
    return f"cannot reach {address} ({details}); is the service running?"


DEFAULT_PORT = 50050


def with_default_port(address: str, port: int = DEFAULT_PORT) -> str:
    """`host` -> `host:50050` (gRPC would dial 443); `host:port` and `[v6]:port` unchanged."""
    if address.endswith("]") or (":" not in address and address):
        return f"{address}:{port}"
    return address
