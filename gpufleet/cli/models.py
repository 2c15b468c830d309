"""`gpufleet models ...`: train (step 1) and test (step 2)."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from gpufleet.cli.base import (
    _table,
    call,
    coord,
    emit,
    models_app,
)
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb


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
    auto_test: Annotated[str, typer.Option(help="run step 2 by itself once step 1 completes: 'best' or an "
                                                "epoch")] = "",
) -> None:
    """Create a model (READY)."""
    spec = pb.JobSpec(image=image, command=command or [])
    m = call(coord().CreateModel, cpb.CreateModelRequest(
        model_no=model_no, version=version, train_type=train_type, memo=memo, params_json=params, spec=spec,
        gpus=gpus, priority=priority, max_retries=max_retries, auto_test=auto_test))
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
