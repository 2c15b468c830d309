"""Who may call what: mTLS roles for daemons, bearer tokens for people.

Agent (gpufleet.v1.Agent), when it serves mTLS (`AgentAuth`):
    role coordinator   every method
    role client        read-only methods (GetNode, ListJobs, Inspect, WatchEvents, StreamLogs):
                       `gpufleet agent status` for operators holding a client certificate
    anything else      PERMISSION_DENIED (agent certificates cannot drive other agents);
                       no certificate: UNAUTHENTICATED
Coordinator (`CoordinatorAuth`):
    gpufleet.v1.Fleet        only agent certificates, and only for their own node: the certificate's
                             CN must equal the request's node_name (Register, Heartbeat, Report), and
                             the address a node registers must be one of its certificate's names.
                             With auth on but no mTLS every Fleet call is refused.
    gpufleet.v1.Coordinator  `authorization: Bearer gft_...` metadata; the token's role decides:
        admin   everything
        user    reads, CreateModel/SubmitJob/SubmitArray/SubmitPipeline (priority at most
                --user-max-priority), and changes only to models, jobs, arrays and pipelines it
                created (recorded in the owners table under the token's name; jobs of a model
                belong to the model's owner); logs and metrics of its own jobs only; its paths
                are scoped to users/<name>/ and others' env values redacted (coordinator/tenancy.py)
        viewer  reads only: Get*, List*, DatasetCounts (env values redacted); logs and metrics
                only with the coordinator's --viewers-read-logs
Health and reflection stay open on both daemons. Without TLS and tokens (the demo, loopback
development) no interceptor is installed at all: `auth=None` changes nothing.

Tokens are `gft_` + 43 URL-safe characters (32 random bytes). The database keeps a per-token salt
and sha256(salt || token); the first 12 characters after `gft_` are the token's public key id
(indexed lookup, shown by `tokens list`, accepted by `tokens revoke`). Verified tokens are cached
in memory for `ttl` seconds (keyed by a digest, never the plaintext), so a revocation made by
another process takes effect within `ttl`. Tokens never reach a log: denials log the token's key
id and name only.

Token storage and the Coordinator's interceptor live in the coordinator (gpufleet.coordinator.tokens):
this module is shared and imports neither daemon.

Interceptors only wrap the method handler: every check runs on the RPC's worker thread with the
request and the auth context in hand (gRPC calls intercept_service on its polling thread, which
must not wait on a database).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gpufleet.errors import InvalidArgument
from gpufleet.log import event
from gpufleet.tls import Identity, peer_identity

log = logging.getLogger("gpufleet.auth")

TOKEN_PREFIX = "gft_"
TOKEN_BYTES = 32
KEY_ID_CHARS = 12
TOKEN_ROLES = ("admin", "user", "viewer")
DEFAULT_TTL = 10.0

AGENT_SERVICE = "gpufleet.v1.Agent"
COORDINATOR_SERVICE = "gpufleet.v1.Coordinator"
FLEET_SERVICE = "gpufleet.v1.Fleet"

# Agent methods an operator's client certificate may call.
AGENT_READ_METHODS = frozenset({"GetNode", "ListJobs", "Inspect", "WatchEvents", "StreamLogs"})
# Coordinator methods by what they need from a `user` token (admin: all; viewer: READ only).
CREATE_METHODS = {"CreateModel": "model", "SubmitJob": "job", "SubmitArray": "job",
                  "SubmitPipeline": "job"}  # -> the owned entity recorded
MODEL_METHODS = frozenset({"RunTrain", "RestartTrain", "ResumeTrain", "CancelTrain", "RunTest", "CancelTest",
                           "SyncStatus", "StageDataset"})  # request.uuid names the model
JOB_METHODS = frozenset({"CancelJob"})  # request.job_id names the job
# Reads of what a job printed or measured: its owner and admins; viewers where the coordinator's
# --viewers-read-logs says so; other users never (a log can hold whatever the job printed).
# DownloadOutput: a file of its output folder, which the job wrote as freely as its log.
OWNER_READ_METHODS = frozenset({"StreamJobLogs", "GetJobMetrics", "DownloadOutput"})  # request.job_id: the job
# request.array_id / request.pipeline_id: a user may cancel it when it owns every job in it.
GROUP_METHODS = {"CancelArray": "array_id", "CancelPipeline": "pipeline_id"}


# Coordinator methods only an admin token may call, reads included (token management).
ADMIN_METHODS = frozenset({"CreateToken", "ListTokens", "RevokeToken"})


def is_admin_method(method: str) -> bool:
    return method in ADMIN_METHODS


def is_read_method(method: str) -> bool:
    if is_admin_method(method):
        return False
    return method.startswith(("Get", "List", "Stream")) or method in ("DatasetCounts", "DownloadOutput")


# -------------------------------------------------------------------------------------------------
# -------------------------------------------------------------------------------------------------
# Server side: interceptors


@dataclass(frozen=True)
class Principal:
    """Who a call is from, once authenticated."""

    name: str
    role: str
    via: str  # "token" | "cert"
    token_id: str = ""


Check = Callable[[Any, grpc.ServicerContext], Callable[[Any], None] | None]

# Who the current RPC is from, set by an interceptor's check on the RPC's worker thread for the
# length of the call; None when no interceptor authenticated it (auth off: everyone is admin).
_CALLER: ContextVar[Principal | None] = ContextVar("gpufleet_caller", default=None)


def caller() -> Principal | None:
    """The authenticated caller of the RPC this thread serves; None with auth off."""
    return _CALLER.get()


def set_caller(who: Principal) -> None:
    """For an interceptor's check: the servicer reads it back with caller()."""
    _CALLER.set(who)


def _forget(reset: Any) -> None:
    try:
        _CALLER.reset(reset)
    except ValueError:  # a stream closed from another thread's context: that thread never saw it
        pass


class _Lazy:
    """A request still in its wire bytes, parsed at the first attribute a check reads.

    A check authenticates from metadata and the peer certificate first, so an unauthenticated
    request is refused without ever being parsed (a large one costs its bytes, not its objects);
    gRPC's max_receive_message_length (gpufleet.server) bounds the bytes before any of this runs.
    """

    __slots__ = ("_context", "_msg", "_parse", "_raw")

    def __init__(self, raw: bytes, parse: Callable[[bytes], Any] | None, context: grpc.ServicerContext) -> None:
        self._raw: bytes | None = raw
        self._parse = parse
        self._context = context
        self._msg: Any = None

    def get(self) -> Any:
        if self._raw is not None:
            try:
                self._msg = self._parse(self._raw) if self._parse else self._raw
            except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
                self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request could not be parsed")
            self._raw = None
        return self._msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def _wrap(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """The same handler, with `check(request, context)` first; what check returns (if anything)
    is called with the response of a successful unary call (to record ownership). The caller a
    check sets lasts for the call only (worker threads are reused). A unary request reaches the
    check unparsed (_Lazy) and is parsed only when the check reads it or the call goes ahead."""
    parse = handler.request_deserializer
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    lazy_kw = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(raw: Any, context: grpc.ServicerContext) -> Any:
            reset = _CALLER.set(None)
            try:
                request = _Lazy(raw, parse, context)
                after = check(request, context)
                response = inner_uu(request.get(), context)
                if after is not None and response is not None:
                    after(response)
                return response
            finally:
                _forget(reset)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **lazy_kw)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(raw: Any, context: grpc.ServicerContext) -> Any:
            reset = _CALLER.set(None)
            try:
                request = _Lazy(raw, parse, context)
                check(request, context)
                yield from inner_us(request.get(), context)
            finally:
                _forget(reset)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **lazy_kw)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            reset = _CALLER.set(None)
            try:
                check(None, context)
                return inner_su(request_iterator, context)
            finally:
                _forget(reset)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    inner_ss = handler.stream_stream

    def stream_stream(request_iterator: Any, context: grpc.ServicerContext) -> Any:
        reset = _CALLER.set(None)
        try:
            check(None, context)
            yield from inner_ss(request_iterator, context)
        finally:
            _forget(reset)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _deny(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, **fields: Any) -> None:
    event(log, "auth.denied", logging.WARNING, code=code.name, detail=message, **fields)
    context.abort(code, message)


class AgentAuth(grpc.ServerInterceptor):
    """gpufleet.v1.Agent accepts only the coordinator's certificate (and, read-only, client certificates).

    Install it only on an mTLS server (tls.server_credentials): without a verified peer certificate
    every Agent call is UNAUTHENTICATED.
    """

    def __init__(self, client_read: bool = True) -> None:
        self.client_read = client_read

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        service, method = _split(handler_call_details.method)
        if handler is None or service != AGENT_SERVICE:
            return handler
        full = f"{service}/{method}"

        def check(request: Any, context: grpc.ServicerContext) -> None:
            ident = peer_identity(context)
            if ident is None:
                _deny(context, grpc.StatusCode.UNAUTHENTICATED,
                      f"{full} needs a client certificate signed by the fleet CA with role coordinator",
                      method=full)
                return
            if ident.role == "coordinator":
                return
            if ident.role == "client" and self.client_read and method in AGENT_READ_METHODS:
                return
            allowed = ("coordinator, or client for reads" if self.client_read and method in AGENT_READ_METHODS
                       else "coordinator")
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"certificate {ident.name!r} has role {ident.role}; {full} accepts only role {allowed}",
                  method=full, peer=ident.name, role=ident.role)

        return _wrap(handler, check)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry; '' when the header is malformed."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def interceptors_for_agent(tls: bool, client_read: bool = True) -> list[grpc.ServerInterceptor]:
    """What the agent installs: AgentAuth when it serves mTLS, nothing otherwise (loopback/demo)."""
    return [AgentAuth(client_read=client_read)] if tls else []


# -------------------------------------------------------------------------------------------------
# Client side


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                         grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: Any) -> Any:
        md = [m for m in (d.metadata or ()) if m[0].lower() != "authorization"] + [self._md]
        return _CallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return continuation(self._details(client_call_details), requests)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return continuation(self._details(client_call_details), requests)

    def __repr__(self) -> str:  # never print the token
        return "_BearerInterceptor(<token>)"


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                 compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel`, sending `authorization: Bearer <token>` on every call (unchanged when token is empty).
    Works on plaintext and TLS channels alike (call credentials would need TLS)."""
    if not token:
        return channel
    return grpc.intercept_channel(channel, _BearerInterceptor(token))


def load_token(token_file: str = "", env: Mapping[str, str] | None = None) -> str | None:
    """The CLI's token: --token-file, else GPUFLEET_TOKEN, else GPUFLEET_TOKEN_FILE; None if none.
    Never from a command-line value (it would land in shell history and `ps`)."""
    env = os.environ if env is None else env
    path = token_file or ""
    if not path and env.get("GPUFLEET_TOKEN"):
        return env["GPUFLEET_TOKEN"].strip()
    path = path or env.get("GPUFLEET_TOKEN_FILE", "")
    if not path:
        return None
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise InvalidArgument("--token-file", f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise InvalidArgument("--token-file", f"{path} is empty")
    return text


__all__ = [
    "ADMIN_METHODS", "AgentAuth", "Identity", "Principal", "bearer_token", "caller", "interceptors_for_agent",
    "is_admin_method", "is_read_method", "load_token", "with_token",
]
