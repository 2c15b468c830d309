"""The output probe: verdict reasons (a contract with the coordinator), metrics and checkpoints."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from gpufleet.agent.probe import MetricRow, probe_outputs


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def val_csv(rows: int, header: str = "epoch,val_loss") -> str:
    return header + "\n" + "".join(f"{i},{1.0 / i}\n" for i in range(1, rows + 1))


@pytest.mark.parametrize(
    ("files", "total_epoch", "val_interval", "completed", "reason"),
    [
        (None, 3, 1, False, "output-dir-missing"),
        ({}, 0, 1, False, "total-epoch-missing"),
        ({}, 3, 1, False, "val.csv-missing"),
        ({"val.csv": val_csv(3)}, 3, 1, True, "ok"),
        ({"val.csv": val_csv(2)}, 3, 1, False, "val.csv-lines-mismatch lines=2 expected=3"),
        ({"val.csv": val_csv(4)}, 3, 1, False, "val.csv-lines-mismatch lines=4 expected=3"),
        ({"val.csv": "epoch,val_loss\n"}, 3, 1, False, "val.csv-lines-mismatch lines=0 expected=3"),
        ({"val.csv": ""}, 3, 1, False, "val.csv-lines-mismatch lines=0 expected=3"),
        # expected = ceil(total / interval): ceil(10 / 3) = 4, ceil(10 / 2) = 5
        ({"val.csv": val_csv(4)}, 10, 3, True, "ok"),
        ({"val.csv": val_csv(3)}, 10, 3, False, "val.csv-lines-mismatch lines=3 expected=4"),
        ({"val.csv": val_csv(5)}, 10, 2, True, "ok"),
        # val_interval <= 0 means 1
        ({"val.csv": val_csv(3)}, 3, -2, True, "ok"),
        ({"val.csv": val_csv(3)}, 3, 0, True, "ok"),
        # blank and whitespace-only lines do not count, wherever they are
        ({"val.csv": "epoch,val_loss\n1,0.5\n\n2,0.4\n   \n\t\n3,0.3\n\n"}, 3, 1, True, "ok"),
        ({"val.csv": "epoch,val_loss\r\n1,0.5\r\n2,0.4\r\n\r\n"}, 2, 1, True, "ok"),
        # the contract check's own fixture: 2 of 3 rows and a trailing blank line
        ({"val.csv": "epoch,val_loss\n1,0.5\n2,0.4\n\n"}, 3, 1, False,
         "val.csv-lines-mismatch lines=2 expected=3"),
    ],
)
def test_verdict_reasons(tmp_path: Path, files: dict[str, str] | None, total_epoch: int, val_interval: int,
                         completed: bool, reason: str) -> None:
    out = tmp_path / "out"
    if files is not None:
        out.mkdir()
        for name, text in files.items():
            write(out, name, text)
    verdict = probe_outputs(out, total_epoch=total_epoch, val_interval=val_interval)
    assert (verdict.completed, verdict.reason) == (completed, reason)


def test_mismatch_reports_counts_in_fields_too(tmp_path: Path) -> None:
    write(tmp_path, "val.csv", val_csv(5))
    verdict = probe_outputs(tmp_path, total_epoch=20, val_interval=3)
    assert (verdict.completed, verdict.reason) == (False, "val.csv-lines-mismatch lines=5 expected=7")
    assert (verdict.val_lines, verdict.expected_lines, verdict.total_epoch) == (5, 7, 20)


def test_output_dir_that_is_a_file_is_missing(tmp_path: Path) -> None:
    write(tmp_path, "out", "not a folder")
    assert probe_outputs(tmp_path / "out", total_epoch=3).reason == "output-dir-missing"


def test_unexpected_error_is_probe_error_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Root reads any folder regardless of mode bits, so stand in for an I/O error (EIO on a dying
    # disk) with a path whose first file-system call fails.
    class Exploding(type(tmp_path)):  # type: ignore[misc]
        def is_dir(self) -> bool:
            raise OSError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="gpufleet.agent.probe"):
        verdict = probe_outputs(Exploding(tmp_path), total_epoch=3)
    assert (verdict.completed, verdict.reason, verdict.total_epoch) == (False, "probe-error", 3)
    assert any(r.name == "gpufleet.agent.probe" and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("spec_value", "params_json", "want"),
    [
        (5, '{"total_epoch": 50}', 5),  # the spec wins
        (0, '{"total_epoch": 50}', 50),
        (0, '{"totalEpoch": 40}', 40),
        (0, '{"totalEpoch": "30"}', 30),
        (0, '{"total_epoch": " 12 "}', 12),
        (0, '{"total_epoch": 20.0}', 20),
        (0, '{"total_epoch": "abc", "totalEpoch": 8}', 8),
        (0, '{"total_epoch": 2.5}', 0),
        (0, '{"total_epoch": -3}', 0),
        (0, '{"total_epoch": true}', 0),
        (0, '{"total_epoch": null}', 0),
        (0, '{"epochs": 10}', 0),
        (0, "not json", 0),
        (0, "[50]", 0),
        (0, "", 0),
        (-1, '{"total_epoch": 7}', 7),
    ],
)
def test_resolve_total_epoch(spec_value: int, params_json: str, want: int) -> None:
    # The probe's own resolution: the spec's value when positive, else params_json's (read even when the
    # folder is missing, so the verdict names the epochs it expected).
    assert probe_outputs(Path("/nonexistent/gpufleet-probe"), spec_value, 1, params_json).total_epoch == want


@pytest.mark.parametrize("key", ["total_epoch", "totalEpoch"])
def test_probe_takes_total_epoch_from_params(tmp_path: Path, key: str) -> None:
    write(tmp_path, "val.csv", val_csv(4))
    verdict = probe_outputs(tmp_path, total_epoch=0, params_json=f'{{"{key}": 4}}')
    assert (verdict.completed, verdict.reason, verdict.total_epoch) == (True, "ok", 4)


@pytest.mark.parametrize(
    ("val_interval", "params_json", "expected"),
    [
        (0, '{"val_interval": 2}', 5),
        (0, '{"valInterval": 5}', 2),
        (0, '{"val_interval": 0}', 10),
        (3, '{"val_interval": 2}', 4),  # an explicit argument wins over params
        (1, '{"val_interval": 2}', 10),
    ],
)
def test_val_interval_from_params_only_when_unset(tmp_path: Path, val_interval: int, params_json: str,
                                                  expected: int) -> None:
    write(tmp_path, "val.csv", val_csv(1))
    verdict = probe_outputs(tmp_path, total_epoch=10, val_interval=val_interval, params_json=params_json)
    assert verdict.expected_lines == expected


def test_metrics_with_epoch_column(tmp_path: Path) -> None:
    write(tmp_path, "train.csv", " Epoch , loss ,lr\n1,0.9,1e-3\n2,0.7,1e-3\n")
    write(tmp_path, "val.csv", "epoch,val_loss,note\n2,0.5,warmup\n\n4,0.4,\n")
    write(tmp_path, "test.csv", "epoch,acc\n4,0.91\n")
    verdict = probe_outputs(tmp_path, total_epoch=4, val_interval=2)
    assert verdict.reason == "ok"
    assert verdict.metrics == [
        MetricRow("train", 1, {"loss": 0.9, "lr": 0.001}),
        MetricRow("train", 2, {"loss": 0.7, "lr": 0.001}),
        MetricRow("val", 2, {"val_loss": 0.5}),
        MetricRow("val", 4, {"val_loss": 0.4}),
        MetricRow("test", 4, {"acc": 0.91}),
    ]


def test_metrics_without_epoch_column_use_row_numbers_and_skip_junk(tmp_path: Path) -> None:
    text = "\ufeffloss,acc\n0.9,0.5\n\nnan,n/a\n0.7,inf\nabc,0.8\n"
    write(tmp_path, "val.csv", text)
    verdict = probe_outputs(tmp_path, total_epoch=4)
    # Row 3 has no finite number and is dropped, but keeps its number so row N is line N.
    assert verdict.metrics == [
        MetricRow("val", 1, {"loss": 0.9, "acc": 0.5}),
        MetricRow("val", 3, {"loss": 0.7}),
        MetricRow("val", 4, {"acc": 0.8}),
    ]
    assert verdict.reason == "ok"


def test_metrics_are_reported_even_when_lines_mismatch(tmp_path: Path) -> None:
    write(tmp_path, "val.csv", "epoch,val_loss\n1,0.5\n2,0.3\n3,0.4\n")
    verdict = probe_outputs(tmp_path, total_epoch=10)
    assert verdict.reason == "val.csv-lines-mismatch lines=3 expected=10"
    assert len(verdict.metrics) == 3
    assert (verdict.best_epoch, verdict.best_metric_key, verdict.best_metric_mode) == (2, "val_loss", "min")


def test_metrics_are_reported_without_total_epoch(tmp_path: Path) -> None:
    write(tmp_path, "train.csv", "epoch,loss\n1,0.5\n")
    verdict = probe_outputs(tmp_path)
    assert verdict.reason == "total-epoch-missing"
    assert verdict.metrics == [MetricRow("train", 1, {"loss": 0.5})]


@pytest.mark.parametrize(
    ("val", "key", "mode", "want"),
    [
        # default: lowest val_loss, then loss
        ("epoch,val_loss,loss,acc\n1,0.5,0.1,0.9\n2,0.3,0.2,0.8\n3,0.4,0.05,0.95\n", "", "",
         (2, "val_loss", "min")),
        ("epoch,loss,acc\n1,0.5,0.9\n2,0.6,0.8\n", "", "", (1, "loss", "min")),
        ("epoch,Val_Loss\n1,0.5\n2,0.2\n", "", "", (2, "Val_Loss", "min")),
        # else highest accuracy-like column
        ("epoch,val_acc\n1,0.5\n2,0.9\n3,0.7\n", "", "", (2, "val_acc", "max")),
        ("epoch,mAP50,precision\n5,0.3,0.9\n10,0.6,0.1\n", "", "", (10, "mAP50", "max")),
        ("epoch,F1\n1,0.7\n2,0.6\n", "", "", (1, "F1", "max")),
        ("epoch,mIoU\n1,0.2\n2,0.6\n", "", "", (2, "mIoU", "max")),
        ("epoch,dice\n1,0.2\n2,0.6\n", "", "", (2, "dice", "max")),
        # ties keep the earliest epoch
        ("epoch,acc\n1,0.9\n2,0.9\n", "", "", (1, "acc", "max")),
        # explicit key; direction from the name, or as given
        ("epoch,val_loss,precision\n1,0.5,0.2\n2,0.3,0.1\n", "precision", "", (1, "precision", "max")),
        ("epoch,val_loss,cer_error\n1,0.5,0.2\n2,0.3,0.4\n", "cer_error", "", (1, "cer_error", "min")),
        ("epoch,val_loss,precision\n1,0.5,0.2\n2,0.3,0.1\n", "precision", "min", (2, "precision", "min")),
        ("epoch,val_loss\n1,0.5\n2,0.3\n", "val_loss", "max", (1, "val_loss", "max")),
        ("epoch,val_loss\n1,0.5\n2,0.3\n", "val_loss", "sideways", (2, "val_loss", "min")),
        # no usable metric
        ("epoch,lr,note\n1,0.1,x\n", "", "", (0, "", "")),
        ("epoch,val_loss\n1,0.5\n", "missing_key", "", (0, "", "")),
        ("epoch,val_loss\n", "", "", (0, "", "")),
    ],
)
def test_best_epoch(tmp_path: Path, val: str, key: str, mode: str, want: tuple[int, str, str]) -> None:
    write(tmp_path, "val.csv", val)
    verdict = probe_outputs(tmp_path, total_epoch=3, best_metric_key=key, best_metric_mode=mode)
    assert (verdict.best_epoch, verdict.best_metric_key, verdict.best_metric_mode) == want


def test_best_epoch_uses_val_not_train(tmp_path: Path) -> None:
    write(tmp_path, "train.csv", "epoch,loss\n1,0.01\n2,0.9\n")
    write(tmp_path, "val.csv", "epoch,loss\n1,0.9\n2,0.2\n")
    assert probe_outputs(tmp_path, total_epoch=2).best_epoch == 2


def test_checkpoints_best_zip_and_latest(tmp_path: Path) -> None:
    for name in ["epoch_2.pth", "epoch-10.pth", "epoch9.pth", "checkpoint_7.pth", "model_best.pth",
                 "checkpoints/epoch_12.pth", "checkpoints/best.pth", "deep/er/epoch_99.pth", "notes.txt"]:
        write(tmp_path, name, "x")
    write(tmp_path, "results/test_result.zip", "zip")
    write(tmp_path, "val.csv", val_csv(3))
    verdict = probe_outputs(tmp_path, total_epoch=3)
    assert verdict.completed
    # Two levels are scanned: deep/er/epoch_99.pth is not counted.
    assert verdict.checkpoints == 7
    assert verdict.best_checkpoint == "checkpoints/best.pth"  # best*.pth beats *best*.pth
    assert verdict.has_result_zip
    assert (verdict.latest_checkpoint_epoch, verdict.latest_checkpoint) == (12, "checkpoints/epoch_12.pth")


@pytest.mark.parametrize(
    ("names", "checkpoints", "best", "latest"),
    [
        ([], 0, "", (0, "")),
        (["model.pth"], 1, "", (0, "")),
        (["last_best_model.pth", "epoch_3.pth"], 2, "last_best_model.pth", (3, "epoch_3.pth")),
        (["BEST.PTH", "Epoch_4.PTH"], 2, "BEST.PTH", (4, "Epoch_4.PTH")),
        (["checkpoint_1.pth", "checkpoint_11.pth", "epoch_3.pth.bak"], 2, "", (11, "checkpoint_11.pth")),
    ],
)
def test_checkpoint_table(tmp_path: Path, names: list[str], checkpoints: int, best: str,
                          latest: tuple[int, str]) -> None:
    for name in names:
        write(tmp_path, name, "x")
    verdict = probe_outputs(tmp_path, total_epoch=1)
    assert verdict.reason == "val.csv-missing"  # file facts are reported whatever the reason
    assert verdict.checkpoints == checkpoints
    assert verdict.best_checkpoint == best
    assert (verdict.latest_checkpoint_epoch, verdict.latest_checkpoint) == latest
    assert not verdict.has_result_zip


def test_rows_are_capped_but_val_lines_are_all_counted(tmp_path: Path) -> None:
    rows = 150_000
    body = "".join(f"{i},{1 / i:.6f},0.5\n" for i in range(1, rows + 1))
    write(tmp_path, "val.csv", "epoch,val_loss,acc\n" + body)
    verdict = probe_outputs(tmp_path, total_epoch=rows)
    assert verdict.reason == "ok" and verdict.val_lines == rows
    assert len(verdict.metrics) == 100_000
    assert verdict.metrics[-1].epoch == 100_000


def test_unparseable_csv_keeps_rows_read_so_far(tmp_path: Path) -> None:
    # A field larger than the csv module's limit stops parsing of that file, not the probe.
    write(tmp_path, "train.csv", "epoch,loss\n1,0.5\n2,\"" + "x" * 200_000 + "\"\n3,0.3\n")
    write(tmp_path, "val.csv", val_csv(1))
    verdict = probe_outputs(tmp_path, total_epoch=1)
    assert verdict.reason == "ok"
    assert [m for m in verdict.metrics if m.split == "train"] == [MetricRow("train", 1, {"loss": 0.5})]
