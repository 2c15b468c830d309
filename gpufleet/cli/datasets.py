"""`gpufleet datasets ...`: stage a model's dataset on its node and count what was staged.

Sources are paths below the agent's --data-root (a file, a folder, or a .zip extracted into a
folder of its name); staging hardlinks them into <data-root>/tmp/<uuid>/<split>/<part>/, which the
model's jobs get as GPUFLEET_DATASET_DIR (README, "Datasets").
"""
from __future__ import annotations

from typing import Annotated

import typer

from gpufleet.cli.base import _table, app, call, coord, emit
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import coordinator_pb2 as cpb

datasets_app = typer.Typer(no_args_is_help=True, help="Stage a model's dataset on a node; count its files.")
app.add_typer(datasets_app, name="datasets")
SPLITS = ("train", "val", "test")
UUID_ARG = typer.Argument(help="the model's uuid (the stage folder's name)")


def _counts_table(title: str, counts: dict[str, int]) -> None:
    _table(title, ["split/part", "files"], [[k, v] for k, v in sorted(counts.items())])


@datasets_app.command("stage")
def datasets_stage(
    uuid: Annotated[str, UUID_ARG],
    split: Annotated[str, typer.Option(help="train, val or test")],
    input1: Annotated[str, typer.Option(help="compare images: a path below --data-root", show_default=False)] = "",
    input2: Annotated[str, typer.Option(help="target images", show_default=False)] = "",
    label: Annotated[str, typer.Option(help="label images", show_default=False)] = "",
    label_json: Annotated[str, typer.Option(help="GeoJSON labels (folder label-json)", show_default=False)] = "",
    dataset_id: Annotated[str, typer.Option(help="prefix for file names, so several datasets can share a split",
                                            show_default=False)] = "",
    node: Annotated[str, typer.Option(help="node to stage on (default: the node of the model's last job, else "
                                           "the only node)", show_default=False)] = "",
) -> None:
    """Hardlink one split's files into the model's stage folder; repeat per split. JSON: the agent's
    answer (stage_dir, made, skipped, extracted, counts, warnings)."""
    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r} is not one of {', '.join(SPLITS)}", param_hint="--split")
    if not (input1 or input2 or label or label_json):
        raise typer.BadParameter("give at least one of --input1, --input2, --label, --label-json",
                                 param_hint="--input1/--input2/--label/--label-json")
    link = apb.StageLink(split=split, dataset_id=dataset_id, input1=input1, input2=input2, label=label,
                         label_json=label_json)
    r = call(coord().StageDataset, cpb.CoordinatorStageRequest(uuid=uuid, links=[link], node=node))

    def table() -> None:
        _counts_table(f"staged in {r.stage_dir}: {r.made} linked, {r.skipped} skipped, {r.extracted} zip(s) "
                      "extracted", dict(r.counts))
        for w in r.warnings:
            typer.echo(f"warning: {w}", err=True)

    emit(r, table)


@datasets_app.command("counts")
def datasets_counts(uuid: Annotated[str, UUID_ARG]) -> None:
    """Files staged for a model, per split/part. JSON: {"uuid", "counts": {"train/input1": N, ...}, "total"}."""
    r = call(coord().DatasetCounts, cpb.ModelRef(uuid=uuid))
    emit(r, lambda: _counts_table(f"dataset of {uuid}: {r.total} files", dict(r.counts)))
