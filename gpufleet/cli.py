"""`gpufleet`: the command line for ML engineers and operators (a thin gRPC client).

Tables for people, `--output json` for scripts. Exit codes: 0 ok, 1 error (the server's message,
never a traceback), 2 usage.
"""
from __future__ import annotations

import json
import os
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
from gpufleet.errors import FleetError
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc, coordinator_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

T = TypeVar("T")
DEFAULT_COORDINATOR = "127.0.0.1:50050"

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0] if __doc__ else "")
models_app = typer.Typer(no_args_is_help=True, help="Models: train (step 1) and test (step 2).")
jobs_app = typer.Typer(no_args_is_help=True, help="Plain jobs and every job attempt.")
nodes_app = typer.Typer(no_args_is_help=True, help="The fleet's GPU servers.")
agent_app = typer.Typer(no_args_is_help=True, help="Talk to one agent directly (operators).")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(agent_app, name="agent")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


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
    CTX.coordinator, CTX.output, CTX.timeout = coordinator, output, timeout
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
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = "; or check --tls-ca/--tls-cert/--tls-key" if CTX.tls_ca else ""
            err.print(f"[red]error:[/] cannot reach {CTX.coordinator} ({exc.details()}); "
                      f"is the service running?{hint}")
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


def model_rows(items: list[cpb.Model]) -> list[list[Any]]:
    return [[m.uuid, m.model_no, m.version, m.status_name, m.step1_state_name, m.step1_duration or "-",
             m.step2_state_name, m.step2_duration or "-", m.best_epoch or "-", m.last_error[:40]] for m in items]


MODEL_COLUMNS = ["uuid", "model", "version", "status", "step1", "train time", "step2", "test time", "best epoch",
                 "last error"]


def show_model(m: cpb.Model) -> None:
    emit(m, lambda: _table(f"model {m.model_no}", MODEL_COLUMNS, model_rows([m])))


# -- models --------------------------------------------------------------------------------------
@models_app.command("create")
def models_create(
    model_no: Annotated[str, typer.Argument(help="model number, e.g. G1")],
    command: Annotated[list[str] | None, typer.Option("--command", "-c", help="argv item (repeat)")] = None,
    image: Annotated[str, typer.Option(help="container image")] = "",
    params: Annotated[str, typer.Option(help="trainer parameters as a JSON object")] = "{}",
    version: str = "", train_type: str = "", memo: str = "", gpus: int = 1, priority: int = 0,
    max_retries: int = 0,
) -> None:
    """Create a model (READY)."""
    spec = pb.JobSpec(image=image, command=command or [])
    m = call(coord().CreateModel, cpb.CreateModelRequest(
        model_no=model_no, version=version, train_type=train_type, memo=memo, params_json=params, spec=spec,
        gpus=gpus, priority=priority, max_retries=max_retries))
    show_model(m)


@models_app.command("list")
def models_list(status: str = "", model_no: str = "", page: int = 0, size: int = 20) -> None:
    """List models, newest first."""
    st = cpb.ModelStatus.Value("MODEL_STATUS_" + status.upper()) if status else 0
    r = call(coord().ListModels, cpb.ListModelsRequest(status=st, model_no=model_no, page=page, size=size))  # type: ignore[arg-type]
    emit(r, lambda: _table(f"models ({r.total_elements}, page {page + 1}/{max(r.total_pages, 1)})", MODEL_COLUMNS,
                           model_rows(list(r.items))))


def _model_action(name: str, rpc: str, doc: str) -> None:
    """Register `gpufleet models NAME UUID`: the Coordinator's `rpc` on that model, which is then shown.
    Called in the order `gpufleet models --help` lists the commands."""

    def action(uuid: str) -> None:
        show_model(call(getattr(coord(), rpc), cpb.ModelRef(uuid=uuid)))

    action.__name__ = action.__qualname__ = "models_" + name.replace("-", "_")
    action.__doc__ = doc
    models_app.command(name)(action)


_model_action("show", "GetModel", "One model.")
_model_action("run", "RunTrain", "RunTrain: READY -> IN_PROGRESS.")
_model_action("restart", "RestartTrain", "RestartTrain from scratch (STOPPED or ERROR).")
_model_action("resume", "ResumeTrain", "ResumeTrain from the latest checkpoint (STOPPED).")
_model_action("cancel", "CancelTrain", "CancelTrain (status and step1 IN_PROGRESS).")


@models_app.command("test")
def models_test(uuid: str, epoch: Annotated[int, typer.Option(help="epoch whose checkpoint to test")]) -> None:
    """RunTest at an epoch (step1 COMPLETED)."""
    show_model(call(coord().RunTest, cpb.RunTestRequest(uuid=uuid, epoch=epoch)))


_model_action("cancel-test", "CancelTest", "CancelTest (step2 IN_PROGRESS).")
_model_action("sync", "SyncStatus", "Reconcile the model's running job now.")


# -- jobs ------------------------------------------------------------------------------------------
JOB_COLUMNS = ["job", "name", "attempt", "status", "exit", "node", "gpus", "epoch", "error"]


def job_rows(jobs: list[cpb.Job]) -> list[list[Any]]:
    return [[j.job_id, j.name, j.attempt, j.status_name, j.exit_code if j.HasField("exit_code") else "-",
             j.node or "-", ",".join(map(str, j.gpu_indices)) or "-",
             f"{j.progress.current_epoch}/{j.progress.total_epoch}" if j.HasField("progress") else "-",
             j.error_message[:50]] for j in jobs]


def show_job(j: cpb.Job, title: str) -> None:
    emit(j, lambda: _table(title, JOB_COLUMNS, job_rows([j])))


@jobs_app.command("submit", context_settings={"allow_interspersed_args": False})
def jobs_submit(
    argv: Annotated[list[str], typer.Argument(help="the command to run (argv, after --)")],
    output_dir: Annotated[str, typer.Option(help="folder under the agents' output root")] = "",
    image: str = "", gpus: int = 1, priority: int = 0, name: str = "", max_retries: int = 0,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat)")] = None,
    request_id: Annotated[str, typer.Option(help="idempotency key: a submit repeating it returns the job the "
                                                 "first one made (default: a new one, kept across this "
                                                 "command's own retries)")] = "",
) -> None:
    """Submit a plain job: gpufleet jobs submit --gpus 1 -- python train.py"""
    envs = {}
    for item in env or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--env")
        envs[k] = v
    import hashlib
    import uuid as uuidlib

    rid = request_id or uuidlib.uuid4().hex
    # The default folder follows from the key, so repeating a command with --request-id repeats the request.
    default_dir = f"jobs/{hashlib.sha256(rid.encode()).hexdigest()[:8]}"
    spec = pb.JobSpec(command=argv, image=image, env=envs, output_dir=output_dir or default_dir)
    j = call_idempotent(coord().SubmitJob, cpb.SubmitJobRequest(
        spec=spec, gpus=gpus, priority=priority, name=name, max_retries=max_retries, request_id=rid))
    show_job(j, "job submitted")


@jobs_app.command("list")
def jobs_list(status: str = "", model: str = "", node: str = "", page: int = 0, size: int = 20) -> None:
    """List job attempts, newest first."""
    st = cpb.JobStatusCode.Value("JOB_STATUS_CODE_" + status.upper()) if status else 0
    r = call(coord().ListJobs, cpb.ListJobsQuery(status=st, model_uuid=model, node=node, page=page, size=size))  # type: ignore[arg-type]
    emit(r, lambda: _table(f"jobs ({r.total_elements})", JOB_COLUMNS, job_rows(list(r.jobs))))


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """One job attempt."""
    show_job(call(coord().GetJob, cpb.JobRef(job_id=job_id)), f"job {job_id}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued job or stop a running one."""
    show_job(call(coord().CancelJob, cpb.JobRef(job_id=job_id)), f"job {job_id}")


@jobs_app.command("logs")
def jobs_logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
              tail: Annotated[int, typer.Option(help="last N lines")] = 0) -> None:
    """A job's output (proxied from its agent)."""
    with rpc_errors():
        for chunk in coord().StreamJobLogs(apb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail),
                                           timeout=None if follow else CTX.timeout):
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.flush()


@jobs_app.command("metrics")
def jobs_metrics(job_id: str) -> None:
    """Per-epoch metrics stored for a job."""
    r = call(coord().GetJobMetrics, cpb.JobRef(job_id=job_id))

    def table() -> None:
        keys = sorted({k for row in r.rows for k in row.values})
        _table(f"metrics of {job_id} (best epoch {r.best_epoch or '-'})", ["split", "epoch", *keys],
               [[row.split, row.epoch, *[f"{row.values[k]:.4g}" if k in row.values else "" for k in keys]]
                for row in r.rows])

    emit(r, table)


# -- nodes -----------------------------------------------------------------------------------------
NODE_COLUMNS = ["node", "state", "address", "gpus (healthy/total)", "running", "agent", "last heartbeat"]


def node_rows(nodes: list[cpb.Node]) -> list[list[Any]]:
    return [[n.name, n.state_name, n.address, f"{sum(g.healthy for g in n.gpus)}/{len(n.gpus)}", n.running_jobs,
             n.agent_version, n.last_heartbeat.ToDatetime().strftime("%H:%M:%S") if n.HasField("last_heartbeat")
             else "-"] for n in nodes]


def show_node(n: cpb.Node, name: str) -> None:
    emit(n, lambda: _table(f"node {name}", NODE_COLUMNS, node_rows([n])))


@nodes_app.command("list")
def nodes_list() -> None:
    """Every node with its state and GPUs."""
    r = call(coord().ListNodes, cpb.ListNodesRequest())
    emit(r, lambda: _table("nodes", NODE_COLUMNS, node_rows(list(r.nodes))))


def gpu_table(title: str, gpus: list[pb.GpuInfo]) -> None:
    _table(title, ["gpu", "name", "util %", "mem used/total GiB", "temp C", "power W", "healthy", "job"],
           [[g.index, g.name, f"{g.utilization_gpu:.0f}",
             f"{g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.0f}", f"{g.temperature_c:.0f}",
             f"{g.power_w:.0f}/{g.power_limit_w:.0f}", "yes" if g.healthy else f"no ({g.health_reason})",
             g.assigned_job_id or "-"] for g in gpus])


@nodes_app.command("show")
def nodes_show(name: str) -> None:
    """One node with GPU telemetry."""
    r = call(coord().ListNodes, cpb.ListNodesRequest())
    match = [n for n in r.nodes if n.name == name]
    if not match:
        err.print(f"[red]error (NOT_FOUND):[/] node {name} is not registered")
        raise typer.Exit(1)
    n = match[0]
    def table() -> None:
        _table(f"node {name}", NODE_COLUMNS, node_rows([n]))
        gpu_table("GPUs", list(n.gpus))

    emit(n, table)


@nodes_app.command("drain")
def nodes_drain(name: str) -> None:
    """No new placements; running jobs finish."""
    show_node(call(coord().DrainNode, cpb.NodeRef(name=name)), name)


@nodes_app.command("undrain")
def nodes_undrain(name: str) -> None:
    """Accept placements again."""
    show_node(call(coord().UndrainNode, cpb.NodeRef(name=name)), name)


# -- agent -----------------------------------------------------------------------------------------
@agent_app.command("status")
def agent_status(address: Annotated[str, typer.Argument(help="agent HOST:PORT")]) -> None:
    """Health, GPUs and jobs, straight from one agent."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ch = dial(address)  # agents take a client certificate (role client: reads only), no token
    CTX.coordinator = address
    with rpc_errors():
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=CTX.timeout)
        stub = agent_pb2_grpc.AgentStub(ch)
        node = stub.GetNode(apb.GetNodeRequest(), timeout=CTX.timeout)
        jobs = stub.ListJobs(apb.ListJobsRequest(), timeout=CTX.timeout)
    if CTX.output == "json":
        print(json.dumps({"health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                          "node": as_dict(node), "jobs": as_dict(jobs).get("jobs", [])}, indent=2))
        return
    out.print(f"agent {node.node_name} ({node.hostname}) v{node.agent_version}: "
              f"{health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}, runtime {node.runtime}, "
              f"GPUs from {node.gpu_source}, up {node.uptime_seconds:.0f}s")
    gpu_table("GPUs", list(node.gpus))
    _table("jobs", ["job", "attempt", "state", "exit", "gpus", "message"],
           [[j.job_id, j.attempt, pb.AgentJobState.Name(j.state).removeprefix("AGENT_JOB_STATE_"),
             j.exit_code if j.HasField("exit_code") else "-", ",".join(map(str, j.gpu_indices)) or "-",
             j.message[:50]] for j in jobs.jobs])


# -- security: certificates and tokens -------------------------------------------------------------
certs_app = typer.Typer(no_args_is_help=True,
                        help="The fleet CA and mTLS certificates (run where the CA key is).")
tokens_app = typer.Typer(no_args_is_help=True,
                         help="API tokens (admin, user, viewer), over the Coordinator API with an admin "
                              "token; the first one: `gpufleet-coordinator tokens create NAME --role admin` "
                              "on the coordinator host.")
app.add_typer(certs_app, name="certs")
app.add_typer(tokens_app, name="tokens")
DEFAULT_CA_DIR = "~/.config/gpufleet/ca"


@contextmanager
def fleet_errors() -> Iterator[None]:
    """A domain error (bad input, missing CA, unknown token) prints its message and exits 1."""
    try:
        yield
    except FleetError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _cert_dict(path: Any, key: Any = None) -> dict[str, Any]:
    i = tls.describe(path)
    d = {"cert": str(path), "name": i.name, "role": i.role, "dns": i.dns, "ips": i.ips,
         "not_before": i.not_before.isoformat(), "not_after": i.not_after.isoformat(), "issuer": i.issuer,
         "sha256": i.fingerprint_sha256}
    if key is not None:
        d["key"] = str(key)
    return d


@certs_app.command("init")
def certs_init(
    directory: Annotated[str, typer.Argument(help="folder for ca.crt and ca.key (keep ca.key off the fleet)")]
    = DEFAULT_CA_DIR,
    common_name: Annotated[str, typer.Option(help="the CA's name")] = "gpufleet CA",
    days: Annotated[int, typer.Option(help="validity in days")] = 3650,
    force: Annotated[bool, typer.Option(help="replace an existing CA (every certificate it signed stops "
                                             "working)")] = False,
) -> None:
    """Make the fleet's certificate authority."""
    with fleet_errors():
        crt, key = tls.init_ca(os.path.expanduser(directory), common_name=common_name, days=days, force=force)
    d = _cert_dict(crt, key)
    if CTX.output == "json":
        print(json.dumps(d, indent=2))
        return
    out.print(f"CA [bold]{common_name}[/] valid until {d['not_after'][:10]}\n  certificate: {crt}\n  "
              f"private key: {key} (0600; keep it off the fleet's machines)\n"
              "next: gpufleet certs issue NAME --role agent|coordinator|client --host ADDRESS "
              f"--ca-dir {directory}")


@certs_app.command("issue")
def certs_issue(
    name: Annotated[str, typer.Argument(help="node name for agents (must match --node-name), else a host "
                                             "or user name")],
    role: Annotated[str, typer.Option(help="agent, coordinator or client (operators and the CLI)")],
    host: Annotated[list[str] | None, typer.Option(help="address peers dial: IP or DNS (repeat)")] = None,
    ca_dir: Annotated[str, typer.Option(envvar="GPUFLEET_CA_DIR", help="the CA's folder")] = DEFAULT_CA_DIR,
    out_dir: Annotated[str, typer.Option(help="for NAME.crt, NAME.key, ca.crt (default: ./NAME)")] = "",
    out_to: Annotated[str, typer.Option("--out", help="for ROLE.crt, ROLE.key, ca.crt, the deploy paths: "
                                                   "--out /etc/gpufleet/tls writes agent.crt for role agent")] = "",
    days: Annotated[int, typer.Option(help="validity in days")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace an existing certificate and key")] = False,
) -> None:
    """Sign a certificate for an agent, the coordinator or a client; refuses to overwrite one without --force."""
    if out_to and out_dir:
        raise typer.BadParameter("give one of --out (ROLE.crt) and --out-dir (NAME.crt)", param_hint="--out")
    with fleet_errors():
        crt, key = tls.issue(os.path.expanduser(ca_dir), out_to or out_dir or name, name, role, host or [],
                             days=days, stem=role if out_to else "", force=force)
    d = _cert_dict(crt, key)
    if CTX.output == "json":
        print(json.dumps(d, indent=2))
        return
    out.print(f"{role} certificate [bold]{name}[/] valid until {d['not_after'][:10]}, "
              f"names {', '.join(d['dns'] + d['ips'])}\n  certificate: {crt}\n  private key: {key} (0600)\n"
              f"  CA: {crt.parent / 'ca.crt'}\n"
              f"use: --tls-cert {crt} --tls-key {key} --tls-ca {crt.parent / 'ca.crt'}")


def _ts(t: Any) -> str:
    return t.ToDatetime().strftime("%Y-%m-%d %H:%M") if t.seconds else "-"


def _token_rows(items: list[cpb.TokenInfo]) -> list[list[Any]]:
    return [[f"gft_{t.id}…", t.name, t.role, _ts(t.created_at), _ts(t.expires_at), _ts(t.revoked_at)]
            for t in items]


TOKEN_COLUMNS = ["id", "name", "role", "created", "expires", "revoked"]


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="who the token is for; owner of what it creates")],
    role: Annotated[str, typer.Option(help="admin, user (own models and jobs) or viewer (reads)")] = "user",
    expires_days: Annotated[float, typer.Option(help="expire after this many days (0: never)")] = 0,
) -> None:
    """Make a token (admin token needed); it is printed once, on stdout, and stored only as a salted hash."""
    r = call(coord().CreateToken, cpb.CreateTokenRequest(name=name, role=role,
                                                         expires_in_seconds=round(expires_days * 86400)))
    if CTX.output == "json":
        print(json.dumps({"token": r.token, **as_dict(r.info)}, indent=2))
        return
    err.print(f"token gft_{r.info.id}… for [bold]{name}[/] (role {role}); shown only now. Give it to the CLI "
              "with GPUFLEET_TOKEN or --token-file:")
    print(r.token)


@tokens_app.command("list")
def tokens_list(
    all_: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
) -> None:
    """Tokens by id (their first characters), name and role; never the secret (admin token needed)."""
    r = call(coord().ListTokens, cpb.ListTokensRequest(include_revoked=all_))
    emit(r, lambda: _table("tokens", TOKEN_COLUMNS, _token_rows(list(r.items))))


@tokens_app.command("revoke")
def tokens_revoke(
    ident: Annotated[str, typer.Argument(help="token id (as `tokens list` shows it), or a name: all its "
                                              "tokens")],
) -> None:
    """Revoke a token (or every token of a name); the coordinator refuses it at once (admin token needed)."""
    r = call(coord().RevokeToken, cpb.RevokeTokenRequest(ident=ident))
    if CTX.output == "json":
        print(json.dumps({"revoked": list(r.ids)}))
        return
    out.print(f"revoked {', '.join(f'gft_{i}…' for i in r.ids)}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="leave the services running and say how to reach them")] = False,
    epochs: Annotated[int, typer.Option(help="epochs the sample trainer runs")] = 6,
    epoch_seconds: Annotated[float, typer.Option(help="seconds per simulated epoch")] = 0.5,
    state_dir: Annotated[str, typer.Option(help="where the demo keeps its state (default: a temp dir)")] = "",
) -> None:
    """Start an embedded coordinator and a local agent, train and test a sample model."""
    from gpufleet.demo import run_demo

    raise typer.Exit(run_demo(out, keep=keep, epochs=epochs, epoch_seconds=epoch_seconds, state_dir=state_dir))


def main() -> None:
    try:
        app(prog_name="gpufleet")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "160")
    main()
