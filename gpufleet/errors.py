"""Domain errors and their one mapping to gRPC status codes.

Domain code raises these; servicers never build status codes themselves. Messages name the
field and the rule so a user can fix the request without reading code.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

log = logging.getLogger("gpufleet.rpc")


class FleetError(Exception):
    """Base of errors a caller may see verbatim."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(FleetError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class PermissionDenied(FleetError):
    """The caller is known but may not do this (e.g. name another tenant's folder)."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(FleetError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(FleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(FleetError):
    """A conflict with another operation that resolves itself (retry later), e.g. a launch while a
    fenced attempt of the same job is still stopping."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(FleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FleetError):
    code = grpc.StatusCode.UNAVAILABLE


class Upstream(FleetError):
    """An error another daemon answered with, passed on with its code (e.g. an agent's refusal)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


F = TypeVar("F", bound=Callable[..., Any])


def _transient(exc: BaseException) -> bool:
    """A lost or refused database connection (a restarting PostgreSQL): safe for clients to retry."""
    if not type(exc).__module__.startswith("sqlalchemy"):
        return False
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or bool(
        getattr(exc, "connection_invalidated", False))


MAX_MESSAGE = 512  # the message travels in a trailer; clients refuse metadata past 8 KiB


def _bounded(message: str) -> str:
    """Messages quote the offending input; a huge input must not make the answer undeliverable."""
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "… (truncated)"


def _abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, FleetError):
        context.abort(exc.code, _bounded(str(exc)))
    if _transient(exc):
        log.warning("rpc failed: database unavailable", extra={"fields": {"method": method}})
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: the database is unavailable; retry")
    # Never leak str(exc) of an unexpected error: it may hold paths or secrets.
    log.exception("rpc failed", extra={"fields": {"method": method}})
    context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error (see the server log)")


def rpc(fn: F) -> F:
    """Map domain errors raised by a unary servicer method to gRPC status codes."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - one place maps every error
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, FleetError):
                raise  # context.abort() raised it already
            _abort(context, fn.__name__, exc)

    return wrapper  # type: ignore[return-value]


def rpc_stream(fn: F) -> F:
    """Like `rpc` for server-streaming methods (generators)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, grpc.RpcError) and not isinstance(exc, FleetError):
                raise
            _abort(context, fn.__name__, exc)

    return wrapper  # type: ignore[return-value]
