"""What both daemons share for Prometheus: a registry per daemon, the /metrics HTTP server, RPC metrics.

Invariants:
- Each daemon builds its own `CollectorRegistry` (`new_registry()`); nothing registers in
  prometheus_client's global REGISTRY, so two daemons (or tests) in one process never collide.
- `/metrics` is served on its own port by a daemon thread; a scrape never runs on an RPC thread.
- `RpcMetricsInterceptor` measures every unary and streaming call with one `perf_counter` pair,
  a cached label lookup and one histogram observe plus one counter inc (a few microseconds).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gpufleet.config import is_loopback, split_hostport
from gpufleet.errors import InvalidArgument
from gpufleet.log import event

log = logging.getLogger("gpufleet.metrics")

# Unary calls here take 0.1 ms to a few seconds (Stop waits for the grace period); streams
# (WatchEvents, StreamLogs -f) run for as long as the client follows, hence the long tail.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
               60.0, 300.0, float("inf"))


def new_registry(process: bool = True) -> CollectorRegistry:
    """A registry of one's own, with the process (RSS, CPU, fds) and Python platform collectors."""
    registry = CollectorRegistry()
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def start_http(listen: str, registry: CollectorRegistry, *, certfile: str = "", keyfile: str = "",
               field: str = "--metrics-listen") -> tuple[WSGIServer, int]:
    """Serve `registry` at http://HOST:PORT/metrics on a daemon thread; return (server, bound port).

    Port 0 picks a free port. Stop with `stop_http(server)`. Binds exactly what it is given: the
    metrics carry no secrets (GPU numbers, job ids, RPC timings), but a non-loopback address is
    logged. With certfile and keyfile it serves HTTPS.
    """
    host, port = split_hostport(listen, field)
    try:
        server, _thread = start_http_server(port, addr=host or "0.0.0.0", registry=registry,
                                            certfile=certfile or None, keyfile=keyfile or None)
    except OSError as exc:
        raise InvalidArgument(field, f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    bound = int(server.server_port)
    if not is_loopback(host):
        event(log, "metrics.public", logging.INFO, listen=f"{host}:{bound}",
              detail="metrics are readable by anyone who can reach this address")
    event(log, "metrics.ready", listen=f"{host}:{bound}")
    return server, bound


def stop_http(server: WSGIServer | None) -> None:
    """Stop a server from `start_http` (idempotent; returns once its loop has ended)."""
    if server is None:
        return
    server.shutdown()
    server.server_close()


def _split_method(full: str) -> tuple[str, str]:
    # "/gpufleet.v1.Agent/Launch" -> ("gpufleet.v1.Agent", "Launch")
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or full


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """`<prefix>_rpc_duration_seconds{service,method,code}` histogram and `<prefix>_rpc_total` counter.

    Pass it to `grpc.server(..., interceptors=[RpcMetricsInterceptor(registry)])`. A streaming call is
    timed until its last message was produced (or it failed). `code` is the gRPC status code name
    (OK, NOT_FOUND, ...; UNKNOWN for an exception the servicer did not map). Only methods the server
    has a handler for are counted, so label cardinality is bounded by the services served.
    """

    def __init__(self, registry: CollectorRegistry | None, prefix: str = "gpufleet",
                 buckets: tuple[float, ...] = RPC_BUCKETS) -> None:
        self.duration = Histogram(f"{prefix}_rpc_duration_seconds",
                                  "gRPC server call latency, by method and code",
                                  ["service", "method", "code"], registry=registry, buckets=buckets)
        self.total = Counter(f"{prefix}_rpc_total", "gRPC server calls finished, by method and code",
                             ["service", "method", "code"], registry=registry)
        # (full method, code name) -> bound children; filled on first use, read without a lock
        # (a dict get is atomic; two threads racing on a miss both compute the same children).
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._names: dict[str, tuple[str, str]] = {}
        self._guard = threading.Lock()
        # full method -> (the handler gRPC gave, our wrapper of it): registered handlers are the same
        # object call after call, so the wrapper is built once per method, not once per call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _record(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        name = "OK" if code is None else code.name
        pair = self._children.get((method, name))
        if pair is None:
            with self._guard:
                service, short = self._names.get(method) or _split_method(method)
                self._names[method] = (service, short)
                pair = (self.duration.labels(service, short, name), self.total.labels(service, short, name))
                self._children[(method, name)] = pair
        pair[0].observe(seconds)
        pair[1].inc()

    def observe(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        """Record one finished call by hand (full method name "/pkg.Service/Method")."""
        self._record(method, code, seconds)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED; not counted (unbounded names)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        record = self._record
        clock = time.perf_counter
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary_unary(request: Any, context: Any) -> Any:
                start = clock()
                try:
                    response = inner(request, context)
                except BaseException:
                    record(method, _failed_code(context), clock() - start)
                    raise
                record(method, context.code(), clock() - start)
                return response

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_stream_wrapper(handler.unary_stream, method, record, clock))
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(requests: Any, context: Any) -> Any:
                start = clock()
                try:
                    response = inner_su(requests, context)
                except BaseException:
                    record(method, _failed_code(context), clock() - start)
                    raise
                record(method, context.code(), clock() - start)
                return response

            return handler._replace(stream_unary=stream_unary)
        if handler.stream_stream is not None:
            wrapped = _stream_wrapper(handler.stream_stream, method, record, clock)
            return handler._replace(stream_stream=wrapped)
        return handler


def _failed_code(context: Any) -> grpc.StatusCode:
    # context.abort() set the code before raising; any other exception becomes UNKNOWN in gRPC.
    code = context.code() if context is not None else None
    return code if code is not None and code != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN


def _stream_wrapper(inner: Callable[[Any, Any], Iterator[Any]], method: str,
                    record: Callable[[str, grpc.StatusCode | None, float], None],
                    clock: Callable[[], float]) -> Callable[[Any, Any], Iterator[Any]]:
    def wrapped(request: Any, context: Any) -> Iterator[Any]:
        start = clock()
        done = False
        try:
            yield from inner(request, context)
        except GeneratorExit:
            # The client went away (or cancelled) and gRPC closed the generator.
            record(method, grpc.StatusCode.CANCELLED, clock() - start)
            done = True
            raise
        except BaseException:
            record(method, _failed_code(context), clock() - start)
            done = True
            raise
        finally:
            if not done:
                record(method, context.code(), clock() - start)

    return wrapped
