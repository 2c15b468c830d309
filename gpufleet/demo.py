"""`gpufleet demo`: one command that shows the whole system on one machine.

Starts an embedded coordinator (SQLite) and one local agent (4 simulated GPUs, process runtime:
the sample trainer is plain Python and no registry image is needed), creates a model, trains it
with live progress, tests it at the best epoch and prints the result. Exit 0 when the model is
COMPLETED with its metrics stored.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, fn, timeout: float, logs: list[Path]):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r = fn()
            if r:
                return r
        except (grpc.RpcError, OSError):  # OSError: the console not listening yet
            pass
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                      for p in logs if p.exists())
    raise RuntimeError(f"timed out waiting for {what}\n{tails}")


def run_demo(out: Console, *, keep: bool, epochs: int, epoch_seconds: float, state_dir: str) -> int:
    root = Path(state_dir).expanduser() if state_dir else Path(tempfile.mkdtemp(prefix="gpufleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    cport, aport = _port(), _port()
    caddr, aaddr = f"127.0.0.1:{cport}", f"127.0.0.1:{aport}"
    clog, alog = root / "coordinator.log", root / "agent.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log: Path) -> None:
        procs.append(subprocess.Popen([sys.executable, "-P", "-m", *args], stdout=open(log, "ab"),
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True))

    out.print(f"[bold]gpufleet demo[/] — state in {root}")
    try:
        spawn(["gpufleet.coordinator.main", "--listen", caddr, "--state-dir", str(root / "coordinator"),
               "--heartbeat-interval", "0.5", "--reconcile-interval", "0.5", "--schedule-interval", "0.5",
               "--metrics-listen", "127.0.0.1:0"], clog)
        ch = grpc.insecure_channel(caddr)
        health = health_pb2_grpc.HealthStub(ch)
        _wait("the coordinator", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
              == health_pb2.HealthCheckResponse.SERVING, 60, [clog])
        out.print(f"  coordinator  {caddr}  (SQLite {root / 'coordinator'})")
        spawn(["gpufleet.agent.main", "--listen", aaddr, "--state-dir", str(root / "agent"), "--runtime", "process",
               "--gpus", "fake:4", "--output-root", str(root / "output"), "--data-root", str(root / "data"),
               "--coordinator", caddr, "--node-name", "demo-node", "--poll-interval", "0.2",
               "--metrics-listen", "127.0.0.1:0",
               # A one-person demo: its jobs run as whoever started it (root only when root ran it).
               "--job-user", str(os.getuid()), *(["--allow-root-jobs"] if os.getuid() == 0 else [])], alog)
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        _wait("the agent to register", lambda: stub.ListNodes(cpb.ListNodesRequest(), timeout=2).nodes, 60,
              [clog, alog])
        out.print(f"  agent        {aaddr}  (4 simulated GPUs, process runtime)")

        params = {"total_epoch": epochs, "epoch_seconds": epoch_seconds, "seed": 7}
        m = stub.CreateModel(cpb.CreateModelRequest(
            model_no="G1", version="demo", train_type="sample", memo="gpufleet demo",
            params_json=json.dumps(params), spec=pb.JobSpec(command=[sys.executable, "-m", "gpufleet.trainer"]),
            gpus=1), timeout=10)
        out.print(f"  model        {m.uuid}  {m.model_no} {m.status_name}")
        m = stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
        m = _follow(out, stub, m.uuid, "train", epochs, lambda x: x.step1_state_name)
        if m.step1_state_name != "COMPLETED":
            out.print(f"[red]training ended {m.step1_state_name}: {m.last_error}[/]")
            return 1
        train_job = m.current_attempt_id
        out.print(f"  training COMPLETED in {m.step1_duration}; best epoch {m.best_epoch}")
        m = stub.RunTest(cpb.RunTestRequest(uuid=m.uuid, epoch=m.best_epoch), timeout=10)
        m = _follow(out, stub, m.uuid, "test", 1, lambda x: x.step2_state_name)
        if m.status_name != "COMPLETED":
            out.print(f"[red]test ended {m.step2_state_name}: {m.last_error}[/]")
            return 1
        _report(out, stub, m, train_job)
        if keep:
            waddr = f"127.0.0.1:{_port()}"
            spawn(["gpufleet.web.main", "--coordinator", caddr, "--listen", waddr], root / "web.log")
            # Loopback plaintext: the coordinator runs without tokens, so the console needs no sign-in.
            _wait("the console", lambda: urllib.request.urlopen(f"http://{waddr}/api/nodes", timeout=2).status
                  == 200, 60, [root / "web.log"])
            out.print(f"  console  http://{waddr}/")
            out.print("\nThe services keep running. Talk to them with:")
            out.print(f"  export GPUFLEET_COORDINATOR={caddr}")
            out.print("  gpufleet models list; gpufleet nodes show demo-node; gpufleet jobs list")
            out.print(f"  gpufleet agent status {aaddr}")
            out.print(f"Stop them with: kill {' '.join(str(p.pid) for p in procs)}")
            procs.clear()
        return 0
    except RuntimeError as exc:
        out.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        if not keep and not state_dir:
            shutil.rmtree(root, ignore_errors=True)


def _follow(out: Console, stub: coordinator_pb2_grpc.CoordinatorStub, uuid: str, what: str, total: int,
            state) -> cpb.Model:  # type: ignore[no-untyped-def]
    """A live progress bar (epoch, loss) until the step leaves IN_PROGRESS."""
    with Progress(TextColumn("  {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=out) as bar:
        task = bar.add_task(what, total=total, metrics="")
        end = time.monotonic() + 600
        while time.monotonic() < end:
            m = stub.GetModel(cpb.ModelRef(uuid=uuid), timeout=5)
            if m.HasField("progress"):
                p = m.progress
                metrics = " ".join(f"{k}={v:.3f}" for k, v in sorted(p.last_metrics.items())[:3])
                bar.update(task, completed=min(p.current_epoch, total), total=p.total_epoch or total, metrics=metrics)
            if state(m) not in ("IN_PROGRESS", "READY"):
                if state(m) == "COMPLETED":
                    bar.update(task, completed=bar.tasks[0].total)
                return m
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not finish in 10 minutes")


def _report(out: Console, stub: coordinator_pb2_grpc.CoordinatorStub, m: cpb.Model, train_job: str) -> None:
    from rich.table import Table

    t = Table(title=f"model {m.model_no} ({m.uuid})")
    for c in ("status", "step1", "train time", "step2", "test time", "best epoch", "test epoch"):
        t.add_column(c)
    t.add_row(m.status_name, m.step1_state_name, m.step1_duration, m.step2_state_name, m.step2_duration,
              str(m.best_epoch), str(m.test_epoch))
    out.print(t)
    rows = stub.GetJobMetrics(cpb.JobRef(job_id=train_job), timeout=5).rows
    test_rows = stub.GetJobMetrics(cpb.JobRef(job_id=m.current_attempt_id), timeout=5).rows
    mt = Table(title="stored metrics (validation per epoch, then test)")
    for c in ("split", "epoch", "loss", "val_loss", "accuracy"):
        mt.add_column(c)
    train_loss = {r.epoch: r.values.get("loss") for r in rows if r.split == "train"}
    for r in [r for r in rows if r.split == "val"] + list(test_rows):
        v = r.values
        loss = v.get("test_loss", train_loss.get(r.epoch) if r.split == "val" else None)
        mt.add_row(r.split, str(r.epoch), f"{loss:.4f}" if loss is not None else "",
                   f"{v['val_loss']:.4f}" if "val_loss" in v else "", f"{v.get('accuracy', float('nan')):.4f}")
    out.print(mt)
    out.print(f"[green]model COMPLETED[/]: {len(rows)} train/val rows and {len(test_rows)} test row stored")
