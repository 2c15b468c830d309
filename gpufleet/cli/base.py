"""`gpufleet`: the command line for ML engineers and operators (a thin gRPC client).

Tables for people, `--output json` for scripts. Exit codes: 0 ok, 1 error (the server's message,
never a traceback), 2 usage.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from gpufleet import auth, tls
from gpufleet.cli.reach import is_connection_failure, unreachable, with_default_port
from gpufleet.errors import FleetError
from gpufleet.v1 import coordinator_pb2_grpc

T = TypeVar("T")
DEFAULT_COORDINATOR = "127.0.0.1:50050"

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="The command line for ML engineers and operators: a thin gRPC client of the coordinator.")
models_app = typer.Typer(no_args_is_help=True, help="Models: train (step 1) and test (step 2).")
jobs_app = typer.Typer(no_args_is_help=True, help="Plain jobs and every job attempt.")
nodes_app = typer.Typer(no_args_is_help=True, help="The fleet's GPU servers.")
agent_app = typer.Typer(no_args_is_help=True, help="Talk to one agent directly (operators).")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(agent_app, name="agent")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # one line per message: greppable, never cut mid-word


class Ctx:
    coordinator: str = DEFAULT_COORDINATOR
    output: str = "table"
    timeout: float = 30.0
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    token: str | None = None


CTX = Ctx()


@app.callback()
def main_options(
    coordinator: Annotated[str, typer.Option(envvar="GPUFLEET_COORDINATOR", help="coordinator HOST:PORT")]
    = DEFAULT_COORDINATOR,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    timeout: Annotated[float, typer.Option(help="seconds per call")] = 30.0,
    tls_ca: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_CA", help="fleet CA (PEM): enables mTLS")] = "",
    tls_cert: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_CERT", help="client certificate (PEM)")] = "",
    tls_key: Annotated[str, typer.Option(envvar="GPUFLEET_TLS_KEY", help="client key (PEM)")] = "",
    token_file: Annotated[str, typer.Option(envvar="GPUFLEET_TOKEN_FILE",
                                            help="file holding the API token (or set GPUFLEET_TOKEN)")] = "",
) -> None:
    if output not in ("table", "json"):
        raise typer.BadParameter("must be table or json", param_hint="--output")
    if bool(tls_cert) != bool(tls_key):
        raise typer.BadParameter("give both or neither", param_hint="--tls-cert/--tls-key")
    CTX.coordinator, CTX.output, CTX.timeout = with_default_port(coordinator), output, timeout
    CTX.tls_ca, CTX.tls_cert, CTX.tls_key = tls_ca, tls_cert, tls_key
    try:
        CTX.token = auth.load_token(token_file)
    except FleetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token-file") from None


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Print the server's message and exit 1; never a traceback."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code()
        name = code.name if code else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE and is_connection_failure(exc.details() or ""):
            err.print(f"[red]error:[/] {unreachable(CTX.coordinator, exc.details() or '', CTX.tls_ca, CTX.tls_cert)}",
                      highlight=False)
        else:
            err.print(f"[red]error ({name}):[/] {exc.details()}")
        raise typer.Exit(1) from None


def dial(address: str) -> grpc.Channel:
    """mTLS when --tls-ca is given, plaintext otherwise."""
    with fleet_errors():
        return tls.dial(address, CTX.tls_ca, CTX.tls_cert, CTX.tls_key)


def coord() -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(dial(CTX.coordinator), CTX.token))


def call(fn: Callable[..., T], req: Message) -> T:
    with rpc_errors():
        return fn(req, timeout=CTX.timeout)


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def call_idempotent(fn: Callable[..., T], req: Message, tries: int = 3) -> T:
    """`call` with retries for a request that carries an idempotency key: an answer lost on the way
    (a coordinator restarting, a reset connection) is asked for again, never acted on twice."""
    with rpc_errors():
        for n in range(tries):
            try:
                return fn(req, timeout=CTX.timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or n == tries - 1:
                    raise
                time.sleep(0.5 * 2**n)
    raise AssertionError("unreachable")


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def emit(msg: Message, table: Callable[[], None]) -> None:
    if CTX.output == "json":
        print(json.dumps(as_dict(msg), indent=2, sort_keys=True))
    else:
        table()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    out.print(t)


@contextmanager
def fleet_errors() -> Iterator[None]:
    """A domain error (bad input, missing CA, unknown token) prints its message and exits 1."""
    try:
        yield
    except FleetError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def poll(fetch: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """`fetch()` until it returns something, for up to `timeout` seconds; an unreachable coordinator
    (not started yet) counts as "not yet". Exit 1 naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            found = fetch()
            if found is not None:
                return found
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            last = f" (last: {exc.details()})"
        if time.monotonic() >= deadline:
            err.print(f"[red]error:[/] timed out after {timeout:g}s waiting for {what}{last}")
            raise typer.Exit(1)
        time.sleep(interval)
