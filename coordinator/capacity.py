"""Agents' traffic is never starved by users: a server interceptor that bounds user RPCs.

The coordinator serves users (gpufleet.v1.Coordinator) and agents (gpufleet.v1.Fleet) from one
pool of worker threads, and a sync gRPC server holds a thread for the whole life of a call: 32
`StreamJobLogs(follow)` streams from one viewer once filled all 32, heartbeats queued behind them
and a healthy node went silent. So user calls get at most `max_workers - fleet_reserve` threads
in all, and one caller (its token, else its host) at most `per_caller_streams` open streams;
beyond either bound a user call is answered RESOURCE_EXHAUSTED at once. Fleet calls, health and
reflection are never counted nor refused, and always find a free thread.

A call is counted from the moment its handler starts on a worker thread until it returns or its
stream is closed; a refused call holds its thread only for the refusal, so with at most
`max_workers - fleet_reserve` user calls running, agents always find threads free.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

FLEET_PREFIX = "/gpufleet.v1.Fleet/"
USER_PREFIX = "/gpufleet.v1.Coordinator/"


class Capacity:
    def __init__(self, total: int, per_caller_streams: int) -> None:
        self.total = total
        self.per_caller_streams = per_caller_streams
        self._lock = threading.Lock()
        self._in_flight = 0
        self._streams: dict[str, int] = {}
        self.refused = 0

    def acquire(self, caller: str, stream: bool) -> str:
        """'' when admitted, else why not."""
        with self._lock:
            if self._in_flight >= self.total:
                self.refused += 1
                return (f"the coordinator is busy ({self._in_flight} user calls in flight, at most {self.total}); "
                        "try again shortly")
            if stream and self._streams.get(caller, 0) >= self.per_caller_streams:
                self.refused += 1
                return (f"at most {self.per_caller_streams} open streams per caller; close one (e.g. a log "
                        "follow) first")
            self._in_flight += 1
            if stream:
                self._streams[caller] = self._streams.get(caller, 0) + 1
            return ""

    def release(self, caller: str, stream: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if stream:
                left = self._streams.get(caller, 1) - 1
                if left:
                    self._streams[caller] = left
                else:
                    self._streams.pop(caller, None)


def _caller(details: Any) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return f"token:{hash(value)}"
    return ""


class UserCapacityInterceptor(grpc.ServerInterceptor):
    """Admits a user call only while capacity is left (see the module docstring)."""

    def __init__(self, max_workers: int = 32, fleet_reserve: int = 8, per_caller_streams: int = 8) -> None:
        self.capacity = Capacity(max(1, max_workers - fleet_reserve), per_caller_streams)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(USER_PREFIX):
            return handler
        token = _caller(handler_call_details)
        cap = self.capacity

        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                caller = token or _host(context.peer())
                why = cap.acquire(caller, True)
                if why:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
                try:
                    yield from inner_stream(request, context)
                finally:
                    cap.release(caller, True)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                caller = token or _host(context.peer())
                why = cap.acquire(caller, False)
                if why:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
                try:
                    return inner_unary(request, context)
                finally:
                    cap.release(caller, False)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        return handler


def _host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (one caller, however many connections)."""
    head, _, _ = peer.rpartition(":")
    return head or peer
