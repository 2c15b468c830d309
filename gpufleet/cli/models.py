"""`gpufleet models ...`: train (step 1) and test (step 2)."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from gpufleet.cli import specs
from gpufleet.cli.base import (
    _table,
    call,
    coord,
    emit,
    emit_doc,
    enum_value,
    err,
    listing,
    models_app,
    watch,
    wide,
)
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb


def model_rows(items: list[cpb.Model]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [m.uuid, m.model_no, m.version, m.status_name, m.step1_state_name, m.step1_duration or "-",
         m.step2_state_name, m.step2_duration or "-", m.best_epoch or "-", m.last_error[:40]] for m in items]
    if wide():
        for row, m in zip(rows, items, strict=True):
            row += [m.train_type or "-", m.current_attempt_id or "-", m.params_json[:60]]
    return rows


MODEL_COLUMNS = ["uuid", "model", "version", "status", "step1", "train time", "step2", "test time", "best epoch",
                 "last error"]
WIDE_MODEL_COLUMNS = [*MODEL_COLUMNS, "train type", "current job", "params"]


def model_table(title: str, items: list[cpb.Model]) -> None:
    _table(title, WIDE_MODEL_COLUMNS if wide() else MODEL_COLUMNS, model_rows(items))


def show_model(m: cpb.Model) -> None:
    def table() -> None:
        model_table(f"model {m.model_no}", [m])
        if m.last_error and m.current_attempt_id:  # "exit code 2" alone does not say why: the log does
            err.print(f"its job's log: gpufleet jobs logs {m.current_attempt_id}", highlight=False)

    emit(m, table)


# -- models --------------------------------------------------------------------------------------
@models_app.command("create")
def models_create(
    model_no: Annotated[str, typer.Argument(help="model number, e.g. G1")],
    command: Annotated[list[str] | None, typer.Option("--command", "-c", help="argv item (repeat)")] = None,
    image: Annotated[str, typer.Option(help="container image")] = "",
    params: Annotated[str, typer.Option(help="trainer parameters as a JSON object")] = "{}",
    version: Annotated[str, typer.Option(help="a version label")] = "",
    train_type: Annotated[str, typer.Option(help="a training type label")] = "",
    memo: Annotated[str, typer.Option(help="a free-form note")] = "",
    gpus: Annotated[int, typer.Option(help="GPUs each of its jobs needs, all on one node")] = 1,
    priority: Annotated[int, typer.Option(help="higher is placed first")] = 0,
    max_retries: Annotated[int, typer.Option(help="requeue a job stopped by node loss up to this many times")] = 0,
    auto_test: Annotated[str, typer.Option(help="run step 2 by itself once step 1 completes: 'best' or an "
                                                "epoch")] = "",
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for its jobs (repeat)")] = None,
    mount: Annotated[list[str] | None, typer.Option(help="SOURCE[:TARGET] read-only data mount; SOURCE below "
                                                         "the agents' --data-root (repeat)")] = None,
    constraint: Annotated[list[str] | None, typer.Option(help="KEY=VALUE node label its nodes must carry "
                                                              "(repeat)")] = None,
    output_dir: Annotated[str, typer.Option(help="its jobs' folder under the agents' output root (default: "
                                                 "models/UUID)", show_default=False)] = "",
    workdir: Annotated[str, typer.Option(help="working directory of its jobs (process runtime: relative to "
                                              "the output folder; default: the output folder)",
                                         show_default=False)] = "",
    lost_after: Annotated[int, typer.Option(help="seconds a job may stay unheard before it is requeued (0: the "
                                                 "coordinator's --lost-after)")] = 0,
) -> None:
    """Create a model (READY). A process node runs the command in the job's output folder: give the
    trainer as an absolute path or a module (`--command python --command -m --command pkg.train`)."""
    spec = pb.JobSpec(image=image, command=command or [], env=specs.pairs(env, "--env"), mounts=specs.mounts(mount),
                      output_dir=output_dir, workdir=workdir)
    m = call(coord().CreateModel, cpb.CreateModelRequest(
        model_no=model_no, version=version, train_type=train_type, memo=memo, params_json=params, spec=spec,
        gpus=gpus, priority=priority, max_retries=max_retries, auto_test=auto_test,
        constraints=specs.pairs(constraint, "--constraint"), lost_after_seconds=lost_after))
    show_model(m)


@models_app.command("list")
def models_list(
    status: Annotated[str, typer.Option(help="only this status: ready, in_progress, completed, stopped, error",
                                        show_default=False)] = "",
    model_no: Annotated[str, typer.Option(help="only this model number", show_default=False)] = "",
    page: Annotated[int, typer.Option(help="page number, from 0")] = 0,
    size: Annotated[int, typer.Option(help="models per page")] = 20,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="show it again every --interval seconds until "
                                                               "Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between --watch refreshes")] = 2.0,
) -> None:
    """List models, newest first. JSON: {"items": [...], "total_elements", "total_pages", "page", "size"}."""
    st = enum_value(cpb.ModelStatus, "MODEL_STATUS_", status, "--status")

    def show() -> None:
        r = call(coord().ListModels, cpb.ListModelsRequest(status=st, model_no=model_no, page=page, size=size))  # type: ignore[arg-type]
        emit_doc(listing(list(r.items), total_elements=int(r.total_elements), total_pages=r.total_pages, page=page,
                         size=size),
                 lambda: model_table(f"models ({r.total_elements}, page {page + 1}/{max(r.total_pages, 1)})",
                                     list(r.items)))

    watch(show, interval) if watch_ else show()


def _model_action(name: str, rpc: str, doc: str) -> None:
    """Register `gpufleet models NAME UUID`: the Coordinator's `rpc` on that model, which is then shown.
    Called in the order `gpufleet models --help` lists the commands."""

    def action(uuid: Annotated[str, typer.Argument(help="the model's uuid")]) -> None:
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
def models_test(uuid: Annotated[str, typer.Argument(help="the model's uuid")],
                epoch: Annotated[int, typer.Option(help="epoch whose checkpoint to test")]) -> None:
    """RunTest at an epoch (step1 COMPLETED)."""
    show_model(call(coord().RunTest, cpb.RunTestRequest(uuid=uuid, epoch=epoch)))


_model_action("cancel-test", "CancelTest", "CancelTest (step2 IN_PROGRESS).")
_model_action("sync", "SyncStatus", "Reconcile the model's running job now.")
