"""Epoch counts from params stay within int32, a stored verdict always converts to the wire type (one
that could not be sent made every RPC carrying its job answer INTERNAL), and SubmitJob refuses
out-of-range counts up front."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from gpufleet.agent import convert
from gpufleet.agent.probe import MAX_INT32, probe_outputs
from gpufleet.coordinator.lifecycle import check_epoch_params

from gpufleet.errors import InvalidArgument
from gpufleet.v1 import common_pb2 as pb


@pytest.mark.parametrize(
    ("params_json", "want"),
    [
        ('{"total_epoch": 2147483647}', MAX_INT32),
        ('{"total_epoch": 2147483648}', 0),
        ('{"total_epoch": 10000000000}', 0),
        ('{"totalEpoch": 1e300}', 0),
        ('{"total_epoch": "1e20"}', 0),
        ('{"total_epoch": 1e999}', 0),  # JSON's infinity
        ('{"total_epoch": "inf"}', 0),
        ('{"total_epoch": "nan"}', 0),
        ('{"total_epoch": 1e20, "totalEpoch": 6}', 6),  # out of range counts as missing: the next key is read
    ],
)
def test_total_epoch_from_params_is_bounded_to_int32(params_json: str, want: int) -> None:
    assert probe_outputs(Path("/nonexistent/gpufleet-probe"), 0, 1, params_json).total_epoch == want


@pytest.mark.parametrize("params_json", ['{"total_epoch": 10000000000}', '{"total_epoch": 2, "val_interval": 1e20}'])
def test_a_verdict_with_huge_params_converts(tmp_path: Path, params_json: str) -> None:
    (tmp_path / "val.csv").write_text("epoch,loss\n1,0.5\n")
    verdict = probe_outputs(tmp_path, params_json=params_json)
    assert verdict.total_epoch <= MAX_INT32 and verdict.expected_lines <= MAX_INT32
    assert convert.probe_to_pb(asdict(verdict)) is not None  # the agent stores asdict(verdict)


BIG = 10**20


@pytest.mark.parametrize("field", ["val_lines", "expected_lines", "checkpoints", "best_epoch",
                                   "latest_checkpoint_epoch", "total_epoch"])
@pytest.mark.parametrize(("value", "want"), [(BIG, 2**31 - 1), (-BIG, -(2**31)), (2**31, 2**31 - 1), (7, 7),
                                             (7.0, 7), (float("inf"), 0), (float("nan"), 0), ("7", 0), (None, 0),
                                             (True, 0)])
def test_probe_to_pb_clamps_every_int_field(field: str, value: Any, want: int) -> None:
    out = convert.probe_to_pb({"reason": "ok", field: value})
    assert out is not None and getattr(out, field) == want


def test_probe_to_pb_never_raises_on_odd_stored_verdicts() -> None:
    odd: dict[str, Any] = {
        "completed": 1, "reason": 5, "best_checkpoint": "best\udcff.pth",  # a file name read with surrogateescape
        "latest_checkpoint": "epoch_\ud800.pth", "best_metric_key": None,
        "metrics": [{"split": "val", "epoch": BIG, "values": {"loss": 0.5, "bad": "x", "k\udcff": 1}},
                    {"split": "val"}, "not a row", {"values": {"acc": float("nan")}}],
    }
    out = convert.probe_to_pb(odd)
    assert out is not None
    assert out.completed and out.reason == "" and out.best_checkpoint.startswith("best")
    assert [(m.epoch, dict(m.values)) for m in out.metrics][0] == (2**31 - 1, {"loss": 0.5, "k?": 1.0})
    assert len(out.metrics) == 2
    assert out.ByteSize() > 0  # it also encodes
    convert.probe_to_pb({"reason": "ok", "metrics": "not a list"})


def test_probe_to_pb_round_trips_a_normal_verdict(tmp_path: Path) -> None:
    (tmp_path / "val.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    (tmp_path / "epoch_2.pth").write_text("")
    verdict = probe_outputs(tmp_path, total_epoch=2)
    out = convert.probe_to_pb(asdict(verdict))
    assert out == pb.ProbeResult(
        completed=True, reason="ok", val_lines=2, expected_lines=2, checkpoints=1, best_epoch=2,
        best_metric_key="loss", best_metric_mode="min", latest_checkpoint_epoch=2, latest_checkpoint="epoch_2.pth",
        total_epoch=2,
        metrics=[pb.MetricRow(split="val", epoch=e, values={"loss": v}) for e, v in ((1, 0.5), (2, 0.4))])


@pytest.mark.parametrize("params_json", ['{"total_epoch": 10000000000}', '{"totalEpoch": 1e300}',
                                         '{"total_epoch": "1e20"}', '{"val_interval": -1}', '{"valInterval": 1e999}'])
def test_submit_refuses_epoch_counts_out_of_range(params_json: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_epoch_params(params_json, "spec.params_json", lenient=True)
    assert exc.value.field.startswith("spec.params_json.")


@pytest.mark.parametrize("params_json", ['{"total_epoch": "30"}', '{"total_epoch": "x"}', '{"total_epoch": null}',
                                         '{"total_epoch": true}', '{"epochs": 1e300}', "[1]", "not json"])
def test_submit_keeps_accepting_params_the_probe_reads_or_ignores(params_json: str) -> None:
    check_epoch_params(params_json, "spec.params_json", lenient=True)  # a plain job's params are its own
