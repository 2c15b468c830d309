"""What both daemons share: building a gRPC server with health, reflection and (m)TLS."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gpufleet.config import is_loopback, split_hostport
from gpufleet.errors import InvalidArgument
from gpufleet.log import event

log = logging.getLogger("gpufleet.server")


def check_listen_security(listen: str, insecure: bool, tls: bool) -> None:
    """Refuse plaintext on a non-loopback address unless --insecure says so explicitly."""
    host, _ = split_hostport(listen, "--listen")
    if tls:
        return
    if not is_loopback(host) and not insecure:
        raise InvalidArgument(
            "--listen",
            f"{listen} is not a loopback address and no TLS is configured; give --tls-cert/--tls-key/--tls-ca "
            "(mTLS) or, on a trusted network only, --insecure",
        )
    if not is_loopback(host):
        event(log, "insecure.listen", logging.WARNING, listen=listen,
              detail="plaintext gRPC on a non-loopback address: anyone who can reach it controls jobs")


# Peers must find each other again within a heartbeat or two after a restart: gRPC's default
# reconnect backoff grows to 120 s, long enough for a node to be declared LOST for nothing.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


# The largest request either daemon parses. gRPC refuses a longer one with RESOURCE_EXHAUSTED from
# its length prefix, before any Python runs (authentication included): 8 MiB keeps a near-4 MiB
# SubmitJob (the clients' own receive limit, the size answers are kept under) and a 100k-link
# StageDataset, while a 30 MiB request costs nothing. Unauthenticated requests under it are not
# parsed either (gpufleet.auth._Lazy).
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def build_server(max_workers: int = 32, interceptors: Sequence[grpc.ServerInterceptor] = ()
                 ) -> tuple[grpc.Server, health.HealthServicer]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=list(interceptors),
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
    )
    hs = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    return server, hs


def enable_reflection(server: grpc.Server, service_names: list[str]) -> None:
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)


def bind(server: grpc.Server, listen: str, creds: grpc.ServerCredentials | None) -> int:
    try:
        port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise InvalidArgument("--listen", f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise InvalidArgument("--listen", f"cannot listen on {listen} (address in use or not local)")
    return port


def set_health(hs: health.HealthServicer, services: list[str], ok: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *services]:
        hs.set(name, status)
