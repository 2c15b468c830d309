"""`gpufleet pipelines ...`: DAGs of job steps submitted as one.

A pipeline file (JSON) names its steps, what each comes after, and each step's job:

    {"name": "train-eval", "steps": [
      {"name": "prepare", "command": ["python", "prep.py"], "output_dir": "pl/prep"},
      {"name": "train", "after": ["prepare"], "command": ["python", "train.py"], "gpus": 2},
      {"name": "challenger", "after": ["prepare"], "shadow": true, "command": ["python", "train2.py"]}]}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gpufleet.cli.base import _table, app, call, coord, emit
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb

pipelines_app = typer.Typer(no_args_is_help=True, help="Pipelines: DAGs of job steps.")
app.add_typer(pipelines_app, name="pipelines")
PIPELINE_ARG = typer.Argument(help="the pipeline's id")
STEP_COLUMNS = ["step", "after", "job", "status", "shadow", "reason"]


def _step(d: dict[str, Any], i: int) -> cpb.PipelineStep:
    try:
        spec = pb.JobSpec(command=[str(a) for a in d.get("command", [])], image=str(d.get("image", "")),
                          env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
                          output_dir=str(d.get("output_dir") or f"pipelines/{d['name']}"))
        job = cpb.SubmitJobRequest(spec=spec, gpus=int(d.get("gpus", 1)), priority=int(d.get("priority", 0)),
                                   time_limit_seconds=int(d.get("time_limit", 0)), name=str(d.get("job_name", "")))
        return cpb.PipelineStep(name=str(d["name"]), job=job, after=[str(a) for a in d.get("after", [])],
                                shadow=bool(d.get("shadow", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise typer.BadParameter(f"steps[{i}]: {exc!r}", param_hint="FILE") from None


def _show(p: cpb.Pipeline) -> None:
    rows = [[s.name, ",".join(s.after) or "-", s.job_id, s.status_name, "yes" if s.shadow else "", s.reason[:60]]
            for s in p.steps]
    emit(p, lambda: _table(f"pipeline {p.pipeline_id} {p.name}: {p.state}", STEP_COLUMNS, rows))


@pipelines_app.command("submit")
def pipelines_submit(file: Annotated[Path, typer.Argument(help="the pipeline file (JSON)")]) -> None:
    """Submit a pipeline from a JSON file (see `gpufleet pipelines --help`)."""
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read a JSON pipeline: {exc}", param_hint="FILE") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise typer.BadParameter('expected {"name": ..., "steps": [...]}', param_hint="FILE")
    steps = [_step(d, i) for i, d in enumerate(doc["steps"])]
    _show(call(coord().SubmitPipeline, cpb.SubmitPipelineRequest(name=str(doc.get("name", file.stem)), steps=steps)))


@pipelines_app.command("show")
def pipelines_show(pipeline_id: Annotated[str, PIPELINE_ARG]) -> None:
    """A pipeline's state and each step's."""
    _show(call(coord().GetPipeline, cpb.PipelineRef(pipeline_id=pipeline_id)))


@pipelines_app.command("cancel")
def pipelines_cancel(pipeline_id: Annotated[str, PIPELINE_ARG]) -> None:
    """Cancel every step that has not finished."""
    _show(call(coord().CancelPipeline, cpb.PipelineRef(pipeline_id=pipeline_id)))
