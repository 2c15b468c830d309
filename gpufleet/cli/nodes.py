"""`gpufleet nodes ...` and `gpufleet agent status`: the fleet's GPU servers."""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from gpufleet.cli.base import (
    CTX,
    _table,
    agent_app,
    as_dict,
    call,
    coord,
    dial,
    emit,
    emit_doc,
    enum_value,
    err,
    listing,
    nodes_app,
    out,
    poll,
    rpc_errors,
    watch,
    wide,
)
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import agent_pb2_grpc
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

# -- nodes -----------------------------------------------------------------------------------------
NODE_COLUMNS = ["node", "state", "address", "gpus (healthy/total)", "running", "agent", "last heartbeat"]


WIDE_NODE_COLUMNS = [*NODE_COLUMNS, "runtime", "labels", "GPU models"]


def node_rows(nodes: list[cpb.Node]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [n.name, n.state_name + (" (calls to it fail TLS)" if n.dial_error else ""), n.address,
         f"{sum(g.healthy for g in n.gpus)}/{len(n.gpus)}", n.running_jobs,
         n.agent_version, n.last_heartbeat.ToDatetime().strftime("%H:%M:%S") if n.HasField("last_heartbeat")
         else "-"] for n in nodes]
    if wide():
        for row, n in zip(rows, nodes, strict=True):
            row += [n.runtime or "-", ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-",
                    ",".join(sorted({g.name for g in n.gpus})) or "-"]
    return rows


def node_table(title: str, nodes: list[cpb.Node]) -> None:
    _table(title, WIDE_NODE_COLUMNS if wide() else NODE_COLUMNS, node_rows(nodes))


def show_node(n: cpb.Node, name: str) -> None:
    emit(n, lambda: node_table(f"node {name}", [n]))


NODE_ARG = typer.Argument(help="the node's name (as in its certificate / --node-name)")


@nodes_app.command("list")
def nodes_list(
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="show it again every --interval seconds until "
                                                               "Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between --watch refreshes")] = 2.0,
) -> None:
    """Every node with its state and GPUs. JSON: {"items": [...]}."""
    def show() -> None:
        r = call(coord().ListNodes, cpb.ListNodesRequest())
        emit_doc(listing(list(r.nodes)), lambda: node_table("nodes", list(r.nodes)))

    watch(show, interval) if watch_ else show()


def gpu_table(title: str, gpus: list[pb.GpuInfo]) -> None:
    _table(title, ["gpu", "name", "util %", "mem used/total GiB", "temp C", "power W", "healthy", "job"],
           [[g.index, g.name, f"{g.utilization_gpu:.0f}",
             f"{g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.0f}", f"{g.temperature_c:.0f}",
             f"{g.power_w:.0f}/{g.power_limit_w:.0f}",
             ("yes" if g.healthy else "no") + (f" ({g.health_reason})" if g.health_reason else ""),
             g.assigned_job_id or "-"] for g in gpus])
    # Who is really on the GPUs (issue 15): a job's own processes, and the ones that are not.
    procs = [[g.index, p.pid, p.kind, p.job_id or "-", f"{p.used_bytes / 2**20:.0f}"]
             for g in gpus for p in g.processes]
    if procs:
        _table("GPU processes", ["gpu", "pid", "kind", "job", "MiB"], procs)


@nodes_app.command("show")
def nodes_show(name: Annotated[str, NODE_ARG]) -> None:
    """One node with GPU telemetry."""
    r = call(coord().ListNodes, cpb.ListNodesRequest())
    match = [n for n in r.nodes if n.name == name]
    if not match:
        err.print(f"[red]error (NOT_FOUND):[/] node {name} is not registered")
        raise typer.Exit(1)
    n = match[0]
    def table() -> None:
        node_table(f"node {name}", [n])
        if n.dial_error:  # heartbeats arrive but the coordinator cannot call it: jobs would hang
            out.print(f"[red]problem:[/] {escape(n.dial_error)}", soft_wrap=True)
        gpu_table("GPUs", list(n.gpus))

    emit(n, table)


@nodes_app.command("drain")
def nodes_drain(name: Annotated[str, NODE_ARG]) -> None:
    """No new placements; running jobs finish."""
    show_node(call(coord().DrainNode, cpb.NodeRef(name=name)), name)


@nodes_app.command("undrain")
def nodes_undrain(name: Annotated[str, NODE_ARG]) -> None:
    """Accept placements again."""
    show_node(call(coord().UndrainNode, cpb.NodeRef(name=name)), name)


@nodes_app.command("wait")
def nodes_wait(
    names: Annotated[list[str], typer.Argument(help="node names (as in their certificates / --node-name)")],
    timeout: Annotated[float, typer.Option("--wait-timeout", help="give up after this many seconds")] = 120,
    state: Annotated[str, typer.Option(help="the state to wait for: ready, or drained (after `nodes drain`: "
                                            "no job left on it)")] = "ready",
) -> None:
    """Wait until these nodes have registered and are READY (the coordinator may still be starting),
    or with --state drained until a drained node has no job left. JSON: {"items": [nodes]}."""
    want = cpb.NodeState.Name(enum_value(cpb.NodeState, "NODE_STATE_", state, "--state")).removeprefix("NODE_STATE_")

    def ready() -> list[cpb.Node] | None:
        r = coord().ListNodes(cpb.ListNodesRequest(), timeout=CTX.timeout)
        found = [n for n in r.nodes if n.name in names and n.state_name == want]
        return found if len(found) == len(set(names)) else None

    with rpc_errors():
        found = poll(ready, timeout, f"node(s) {', '.join(names)} to be {want}")
    emit_doc(listing(found), lambda: node_table("nodes", found))


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
