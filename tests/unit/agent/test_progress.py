"""Live progress parsing: the line formats trainers print, and a byte stream that arrives in pieces."""
from __future__ import annotations

import pytest
from gpufleet.agent.progress import MAX_BUFFER, ProgressState, ProgressTracker, parse_line
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("line", "want"),
    [
        # The epoch line: Epoch N/M, then key=value / key: value pairs.
        ("Epoch 3/50", (3, 50, {})),
        ("epoch 3/50 loss=0.41", (3, 50, {"loss": 0.41})),
        ("[Epoch 3/50] loss: 0.41 val_loss: 0.52", (3, 50, {"loss": 0.41, "val_loss": 0.52})),
        ("Epoch: 3 / 50", (3, 50, {})),
        ("epoch 3 of 50", (3, 50, {})),
        ("EPOCH [7/120] acc: 95.1%", (7, 120, {"acc": 95.1})),
        ("2024-05-01 12:00:01 INFO trainer: Epoch 4/10 loss=0.3", (4, 10, {"loss": 0.3})),
        ("Epoch 3/50: 100%|##########| 120/120 [00:10<00:00, 11.2it/s, loss=0.4]", (3, 50, {"loss": 0.4})),
        ("Epoch 3/50:  45%|████▌     | 54/120 [00:04<00:05, 12.1it/s, loss=0.43]", (3, 50, {"loss": 0.43})),
        ("\x1b[2K\x1b[32mEpoch 6/8\x1b[0m loss=\x1b[1m0.2\x1b[0m", (6, 8, {"loss": 0.2})),
        ("Epoch 2/9 lr=1e-3 grad_norm=-2.5E+01", (2, 9, {"lr": 0.001, "grad_norm": -25.0})),
        ("Epoch 2/9 train/loss=0.3 val/mAP@0.5=0.7 top-1: .5", (2, 9, {"train/loss": 0.3, "top-1": 0.5})),
        # only pairs after the marker; nan/inf, units and clock times are not metrics
        ("pid=655 Epoch 1/2 loss=0.5", (1, 2, {"loss": 0.5})),
        ("Epoch 1/2 loss=nan acc=inf lr=1e999 time: 3.2s eta: 0:00:12 ok=1", (1, 2, {"ok": 1.0})),
        # The machine line.
        ('GPUFLEET_METRICS {"epoch": 3, "total_epoch": 50, "loss": 0.41, "acc": 1}',
         (3, 50, {"loss": 0.41, "acc": 1.0})),
        ('  GPUFLEET_METRICS {"val/f1": 0.8, "note": "x", "ok": true, "bad": NaN}', (None, None, {"val/f1": 0.8})),
        ("GPUFLEET_METRICS [1, 2]", None),
        ("GPUFLEET_METRICS {not json", None),
        ('GPUFLEET_METRICSX {"a": 1}', None),
        ('GPUFLEET_METRICS {"epoch": 2.5}', None),
        # Plain prints: just log (issue 15: this line became stored metrics pid=655).
        ("device=cuda CUDA_VISIBLE_DEVICES=0 name=NVIDIA H200 pid=655", None),
        ("step 100 loss=0.25", None),
        ("epoch=3 loss=0.41 val_loss=0.52", None),
        ("epoch=3 total_epoch=50", None),
        ("Epoch 4:", None),
        ("training for 50 epochs", None),
        ("epochs=50", None),
        ("epoch 12345678901/3", None),
        ("", None),
        ("INFO loading /data/train (1234 files)", None),
        ("12:00:01 started", None),
        ("http://host:8080/path", None),
        # PyTorch Lightning: an epoch bar without a total, with v_num: not the grammar.
        ("Epoch 0: 100%|██████████| 32/32 [00:01<00:00, 20.10it/s, v_num=0, train_loss=0.512]", None),
        ("Validation DataLoader 0: 100%|██████████| 8/8 [00:00<00:00, 61.2it/s]", None),
        ("  | Name  | Type   | Params", None),
        ("Trainer already configured with model summary callbacks: [<class 'ModelSummary'>].", None),
        # Hugging Face Trainer: dicts and tqdm bars are log.
        ("{'loss': 0.6931, 'grad_norm': 1.23, 'learning_rate': 4.5e-05, 'epoch': 0.5}", None),
        ("{'eval_loss': 0.41, 'eval_runtime': 1.2, 'epoch': 1.0}", None),
        (" 50%|█████     | 250/500 [00:30<00:30,  8.21it/s]", None),
        ("***** Running training *****", None),
        ("  Num Epochs = 3", None),
        # Keras: the epoch header is the grammar; its step bars are log.
        ("Epoch 1/10", (1, 10, {})),
        ("469/469 [==============================] - 3s 6ms/step - loss: 0.2872 - accuracy: 0.9182", None),
        ("469/469 ━━━━━━━━━━━━━━━━━━━━ 2s 4ms/step - accuracy: 0.9182 - loss: 0.2872", None),
        # Plain prints of an environment or a config.
        ("CUDA_VISIBLE_DEVICES=0,1 WORLD_SIZE=2 RANK=0", None),
        ("batch_size: 32 lr: 0.001 seed: 42", None),
    ],
)
def test_parse_line(line: str, want: tuple[int | None, int | None, dict[str, float]] | None) -> None:
    assert parse_line(line) == want


def test_keys_are_bounded() -> None:
    long_key = "k" * 65
    assert parse_line(f"Epoch 1/1 {long_key}=1") == (1, 1, {})
    assert parse_line(f"Epoch 1/1 {'k' * 64}=1") == (1, 1, {"k" * 64: 1.0})


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_line_never_raises(line: str) -> None:
    result = parse_line(line)
    assert result is None or (isinstance(result, tuple) and len(result) == 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_tracker_never_raises_on_any_bytes(chunks: list[bytes]) -> None:
    tracker = ProgressTracker()
    for i, chunk in enumerate(chunks):
        tracker.feed(chunk, float(i))
    tracker.flush(99.0)
    assert tracker.state.current_epoch >= 0 and len(tracker.state.metrics) <= 32


def test_partial_lines_across_feeds() -> None:
    tracker = ProgressTracker()
    assert tracker.feed(b"[Epo", 1.0) is False
    assert tracker.feed(b"ch 3/5", 2.0) is False
    assert tracker.state == ProgressState()
    assert tracker.feed(b"0] loss: 0.4", 3.0) is False
    assert tracker.feed(b"1\nnext", 4.0) is True
    assert tracker.state == ProgressState(3, 50, {"loss": 0.41}, 4.0)


def test_tqdm_carriage_returns_and_crlf() -> None:
    tracker = ProgressTracker()
    stream = b"Epoch 1/3:  50%|#  | 1/2 [loss=0.9]\rEpoch 1/3: 100%|## | 2/2 [loss=0.8]\r\n"
    assert tracker.feed(stream, 5.0) is True
    assert tracker.state == ProgressState(1, 3, {"loss": 0.8}, 5.0)


def test_metrics_merge_and_the_state_reports_no_change_for_repeats() -> None:
    tracker = ProgressTracker()
    assert tracker.feed(b"Epoch 2/10 loss=0.5\n", 1.0)
    assert tracker.feed(b"GPUFLEET_METRICS {\"val_loss\": 0.6}\n", 2.0)
    assert tracker.state.metrics == {"loss": 0.5, "val_loss": 0.6}
    assert tracker.feed(b"Epoch 2/10 loss=0.5\nunrelated chatter\n", 3.0) is False
    assert tracker.state.updated_at == 2.0
    assert tracker.feed(b"Epoch 3/10\n", 4.0)
    assert (tracker.state.current_epoch, tracker.state.metrics["val_loss"]) == (3, 0.6)


def test_invalid_utf8_and_garbage_do_not_hide_progress() -> None:
    tracker = ProgressTracker()
    assert tracker.feed(b"\xff\xfe\x00garbage\x80\n\x1b[2KEpoch 5/9 \xc3( loss=0.3\n", 1.0)
    assert tracker.state == ProgressState(5, 9, {"loss": 0.3}, 1.0)


def test_over_long_line_is_dropped_whole() -> None:
    tracker = ProgressTracker()
    assert tracker.feed(b"x" * (MAX_BUFFER + 1), 1.0) is False
    # The end of the over-long line must not be read as a line of its own.
    assert tracker.feed(b"Epoch 9/9\nEpoch 2/4\n", 2.0) is True
    assert (tracker.state.current_epoch, tracker.state.total_epoch) == (2, 4)
    assert len(tracker._buf) == 0


def test_buffer_is_capped() -> None:
    tracker = ProgressTracker()
    for _ in range(100):
        tracker.feed(b"y" * 4096, 1.0)
    assert len(tracker._buf) <= MAX_BUFFER


def test_max_metrics_keeps_the_first_keys() -> None:
    tracker = ProgressTracker(max_metrics=2)
    tracker.feed(b"Epoch 1/2 a=1 b=2 c=3\n", 1.0)
    tracker.feed(b"Epoch 1/2 d=4 a=5\n", 2.0)
    assert tracker.state.metrics == {"a": 5.0, "b": 2.0}


def test_flush_parses_the_last_unterminated_line() -> None:
    tracker = ProgressTracker(ProgressState(current_epoch=1, total_epoch=2))
    tracker.feed(b"Epoch 2/2 loss=0.1", 1.0)
    assert tracker.state.current_epoch == 1
    assert tracker.flush(2.0) is True
    assert tracker.state == ProgressState(2, 2, {"loss": 0.1}, 2.0)
    assert tracker.flush(3.0) is False
