"""`gpufleet jobs ...`: plain jobs and every job attempt."""
from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from gpufleet.cli import specs
from gpufleet.cli.base import (
    CTX,
    _table,
    call,
    call_idempotent,
    coord,
    emit,
    emit_doc,
    enum_value,
    jobs_app,
    listing,
    out,
    poll,
    print_json,
    rpc_errors,
    watch,
    wide,
)
from gpufleet.cli.usage import usage_line
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

# -- jobs ------------------------------------------------------------------------------------------
JOB_COLUMNS = ["job", "name", "attempt", "status", "exit", "node", "gpus", "epoch", "error / waits for"]
WIDE_JOB_COLUMNS = [*JOB_COLUMNS, "model", "priority", "created", "started", "finished", "command / image"]


def why(j: cpb.Job) -> str:
    """The error of an ended job, or why a queued one waits."""
    return f"{j.pending_code}: {j.pending_reason}" if j.pending_code else j.error_message


def _when(t: Any) -> str:
    return t.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if t.seconds else "-"


def job_rows(jobs: list[cpb.Job]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [j.job_id, j.name, j.attempt, j.status_name, j.exit_code if j.HasField("exit_code") else "-",
         j.node or "-", ",".join(map(str, j.gpu_indices)) or "-",
         f"{j.progress.current_epoch}/{j.progress.total_epoch}" if j.HasField("progress") else "-",
         why(j)[:70]] for j in jobs]
    if wide():
        for row, j in zip(rows, jobs, strict=True):
            row += [j.model_uuid or "-", j.priority, _when(j.created_at), _when(j.started_at), _when(j.finished_at),
                    j.spec.image or " ".join(j.spec.command)]
    return rows


def job_table(title: str, jobs: list[cpb.Job]) -> None:
    _table(title, WIDE_JOB_COLUMNS if wide() else JOB_COLUMNS, job_rows(jobs))


def show_job(j: cpb.Job, title: str) -> None:
    def table() -> None:
        job_table(title, [j])
        if j.HasField("gpu_usage"):
            out.print(usage_line(j.gpu_usage))

    emit(j, table)


@jobs_app.command("submit", context_settings={"allow_interspersed_args": False})
def jobs_submit(
    argv: Annotated[list[str], typer.Argument(help="the command to run (argv, after --)")],
    output_dir: Annotated[str, typer.Option(help="folder under the agents' output root")] = "",
    image: Annotated[str, typer.Option(help="container image (docker nodes); the command overrides its own")]
    = "",
    gpus: Annotated[int, typer.Option(help="GPUs the job needs, all on one node (0: none)")] = 1,
    priority: Annotated[int, typer.Option(help="higher is placed first")] = 0,
    name: Annotated[str, typer.Option(help="a name to find it by")] = "",
    max_retries: Annotated[int, typer.Option(help="requeue it up to this many times when its node is lost")] = 0,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat)")] = None,
    mount: Annotated[list[str] | None, typer.Option(help="SOURCE[:TARGET] read-only data mount; SOURCE below "
                                                         "the agents' --data-root (repeat)")] = None,
    constraint: Annotated[list[str] | None, typer.Option(help="KEY=VALUE node label the node must carry "
                                                              "(repeat)")] = None,
    request_id: Annotated[str, typer.Option(help="idempotency key: a submit repeating it returns the job the "
                                                 "first one made (default: a new one, kept across this "
                                                 "command's own retries)", show_default=False)] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id (for scripts: "
                                                              "JOB=$(gpufleet jobs submit -q -- ...))")] = False,
    after: Annotated[list[str] | None, typer.Option(help="start after this job succeeded (repeat; Slurm "
                                                         "afterok); with --after-any, after it ended")] = None,
    after_any: Annotated[bool, typer.Option(help="--after jobs only need to end, not succeed")] = False,
    time_limit: Annotated[int, typer.Option(help="stop it (reason TIME_LIMIT) after this many seconds")] = 0,
    wait_for_capacity: Annotated[bool, typer.Option(help="queue it even if no node could run it now")] = False,
    array: Annotated[int, typer.Option(help="submit N copies (a sweep): FLEET_ARRAY_INDEX 0..N-1, "
                                            "output folder OUTPUT/i")] = 0,
    max_running: Annotated[int, typer.Option(help="with --array: at most this many at once")] = 0,
) -> None:
    """Submit a plain job: gpufleet jobs submit --gpus 1 -- python train.py"""
    envs = specs.pairs(env, "--env")
    import hashlib
    import uuid as uuidlib

    rid = request_id or uuidlib.uuid4().hex
    # The default folder follows from the key, so repeating a command with --request-id repeats the request.
    default_dir = f"jobs/{hashlib.sha256(rid.encode()).hexdigest()[:8]}"
    spec = pb.JobSpec(command=argv, image=image, env=envs, output_dir=output_dir or default_dir,
                      mounts=specs.mounts(mount))
    req = cpb.SubmitJobRequest(
        spec=spec, gpus=gpus, constraints=specs.pairs(constraint, "--constraint"),
        priority=priority, name=name, max_retries=max_retries, request_id=rid,
        depends_on=after or [], dependency_mode="afterany" if after_any else "", time_limit_seconds=time_limit,
        wait_for_capacity=wait_for_capacity)
    if array:
        req.ClearField("request_id")  # an array is one request of N jobs; it is not retried blindly
        arr = call(coord().SubmitArray, cpb.SubmitArrayRequest(job=req, count=array, max_running=max_running))
        if quiet:
            print(arr.array_id)
            return
        emit(arr, lambda: job_table(f"array {arr.array_id}", list(arr.jobs)))
        return
    j = call_idempotent(coord().SubmitJob, req)
    if quiet:
        print(j.job_id)
        return
    show_job(j, "job submitted")


WATCH_HELP = "show it again every --interval seconds until Ctrl-C"


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str, typer.Option(help="only this status: queued, running, success, failed, stopped, "
                                             "canceled", show_default=False)] = "",
    model: Annotated[str, typer.Option(help="only this model's jobs (its uuid)", show_default=False)] = "",
    node: Annotated[str, typer.Option(help="only jobs on this node", show_default=False)] = "",
    page: Annotated[int, typer.Option(help="page number, from 0")] = 0,
    size: Annotated[int, typer.Option(help="jobs per page")] = 20,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help=WATCH_HELP)] = False,
    interval: Annotated[float, typer.Option(help="seconds between --watch refreshes")] = 2.0,
) -> None:
    """List job attempts, newest first. JSON: {"items": [...], "total_elements", "total_pages", "page", "size"}."""
    st = enum_value(cpb.JobStatusCode, "JOB_STATUS_CODE_", status, "--status")

    def show() -> None:
        r = call(coord().ListJobs, cpb.ListJobsQuery(status=st, model_uuid=model, node=node, page=page, size=size))  # type: ignore[arg-type]
        emit_doc(listing(list(r.jobs), total_elements=int(r.total_elements), total_pages=r.total_pages, page=page,
                         size=size), lambda: job_table(f"jobs ({r.total_elements})", list(r.jobs)))

    watch(show, interval) if watch_ else show()


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="the job attempt's id")]) -> None:
    """One job attempt."""
    show_job(call(coord().GetJob, cpb.JobRef(job_id=job_id)), f"job {job_id}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="the job attempt's id")]) -> None:
    """Cancel a queued job or stop a running one."""
    show_job(call(coord().CancelJob, cpb.JobRef(job_id=job_id)), f"job {job_id}")


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="the job attempt's id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output until the job ends")]
    = False,
    tail: Annotated[int, typer.Option(help="only the last N lines (0: all)")] = 0,
) -> None:
    """A job's output (proxied from its agent). With -f on a queued job, waits for it to start.
    JSON: {"job_id", "items": [lines]}; with -f one {"job_id", "line"} object per line (JSON Lines)."""
    if follow:
        j = call(coord().GetJob, cpb.JobRef(job_id=job_id))
        if j.status_name == "QUEUED":
            print(f"waiting for job {job_id} to start ({why(j)})", file=sys.stderr, flush=True)
    lines = LineSplitter()
    with rpc_errors():
        for chunk in coord().StreamJobLogs(apb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail),
                                           timeout=None if follow else CTX.timeout):
            if CTX.output != "json":
                sys.stdout.buffer.write(chunk.data)
                sys.stdout.flush()
            elif follow:
                for line in lines.feed(chunk.data):
                    print(json.dumps({"job_id": job_id, "line": line}), flush=True)
            else:
                lines.feed(chunk.data)
    if CTX.output == "json":
        rest = lines.close()
        if follow:
            for line in rest:
                print(json.dumps({"job_id": job_id, "line": line}), flush=True)
        else:
            print_json({"job_id": job_id, "items": lines.done + rest})


class LineSplitter:
    """Bytes in chunks -> whole text lines (a chunk may end mid-line or mid-character)."""

    def __init__(self) -> None:
        self.buf = b""
        self.done: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        *whole, self.buf = (self.buf + data).split(b"\n")
        new = [w.decode(errors="replace") for w in whole]
        self.done += new
        return new

    def close(self) -> list[str]:
        rest = [self.buf.decode(errors="replace")] if self.buf else []
        self.buf = b""
        return rest


@jobs_app.command("metrics")
def jobs_metrics(job_id: Annotated[str, typer.Argument(help="the job attempt's id")]) -> None:
    """Per-epoch metrics stored for a job. JSON: {"job_id", "best_epoch", "items": [rows]}."""
    r = call(coord().GetJobMetrics, cpb.JobRef(job_id=job_id))

    def table() -> None:
        keys = sorted({k for row in r.rows for k in row.values})
        _table(f"metrics of {job_id} (best epoch {r.best_epoch or '-'})", ["split", "epoch", *keys],
               [[row.split, row.epoch, *[f"{row.values[k]:.4g}" if k in row.values else "" for k in keys]]
                for row in r.rows])

    emit_doc(listing(list(r.rows), job_id=r.job_id, best_epoch=r.best_epoch), table)


FINAL_JOB_STATUSES = ("SUCCESS", "FAILED", "STOPPED", "CANCELED")


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[str, typer.Argument(help="the job attempt's id")],
    timeout: Annotated[float, typer.Option("--wait-timeout", help="give up after this many seconds")] = 600,
) -> None:
    """Wait until a job has ended and show it; exit 0 if it succeeded, 1 otherwise."""
    def ended() -> cpb.Job | None:
        j = coord().GetJob(cpb.JobRef(job_id=job_id), timeout=CTX.timeout)
        return j if j.status_name in FINAL_JOB_STATUSES else None

    with rpc_errors():
        j = poll(ended, timeout, f"job {job_id} to end")
    show_job(j, f"job {job_id}")
    if j.status_name != "SUCCESS":
        raise typer.Exit(1)
