"""Live training progress from a job's log output: only lines of a small documented grammar count.

The grammar (README, "Job progress"), everything else is just log:

1. The epoch line: ``Epoch N/M`` (case-insensitive; ``[Epoch N/M]``, ``Epoch [N/M]``, ``Epoch N of M``
   and a logger prefix before it are fine) followed by ``key=value`` or ``key: value`` pairs. Only
   pairs *after* the marker are metrics, and only plain finite numbers (no units, no clock times).
2. The machine line: ``GPUFLEET_METRICS {json object}`` at the start of a line. ``epoch`` and
   ``total_epoch`` set the progress; every other key with a finite number is a metric.

So ``device=cuda CUDA_VISIBLE_DEVICES=0 pid=655``, Lightning's ``Epoch 0: ... v_num=0`` bars,
Hugging Face's ``{'loss': 0.5}`` dicts and Keras' step bars are never metrics.

The log pump feeds raw bytes as they arrive; parsing must never raise or slow the pump: regexes
are precompiled, lines are capped, and anything unrecognised is ignored.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

MAX_BUFFER = 64 * 1024  # a "line" longer than this is not a progress line (binary junk, a dump)
MAX_LINE_CHARS = 4096  # progress lines are short; bounding the scan bounds the cost
_MAX_INT = 2**31 - 1  # the wire type is int32
MACHINE_PREFIX = "GPUFLEET_METRICS"

# "Epoch 3/50", "[Epoch 3/50]", "Epoch [3/50]", "Epoch: 3 / 50", "epoch 3 of 50". `\b` keeps
# "total_epoch" and "epochs" out; the lookaheads refuse "epoch 3.5" and 10+ digits.
_EPOCH = re.compile(
    r"\bepoch\b\s*:?\s*\[?\s*(\d{1,9})(?![\d]|\.\d)\s*(?:/|\bof\b)\s*(\d{1,9})(?![\d]|\.\d)\]?",
    re.IGNORECASE | re.ASCII,
)
# key=value or key: value; the lookbehind stops "3.2it/s" yielding a key "it/s", the lookahead
# drops values with units or clock times ("3.2s", "0:00:12"), which are not metrics.
_PAIR = re.compile(
    r"(?<![A-Za-z0-9_./-])([A-Za-z_][A-Za-z0-9_./-]{0,63})\s*[:=]\s*"
    r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z0-9_.:])",
    re.ASCII,
)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,63}", re.ASCII)
# Colour and cursor codes (tqdm's "\x1b[2K", coloured loggers) would glue onto words.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EPOCH_KEYS = frozenset({"epoch"})
_TOTAL_KEYS = frozenset({"total_epoch", "total", "total_epochs", "num_epochs", "max_epochs", "epochs"})
_MAX_PAIRS_PER_LINE = 64


@dataclass
class ProgressState:
    current_epoch: int = 0
    total_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    updated_at: float = 0.0


def parse_line(line: str) -> tuple[int | None, int | None, dict[str, float]] | None:
    """(epoch, total, metrics) from one log line, or None when the grammar does not define it."""
    try:
        return _parse(line[:MAX_LINE_CHARS])
    except Exception:  # noqa: BLE001 - a log line must never break the log pump
        return None


def _parse(line: str) -> tuple[int | None, int | None, dict[str, float]] | None:
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    stripped = line.lstrip()
    if stripped.startswith(MACHINE_PREFIX):
        return _parse_machine(stripped[len(MACHINE_PREFIX):])
    if "poch" not in line and "POCH" not in line:
        return None  # fast path: most log lines are not epoch lines
    m = _EPOCH.search(line)
    if not m:
        return None
    epoch, total = _bounded(int(m.group(1))), _bounded(int(m.group(2)))
    metrics: dict[str, float] = {}
    for n, pm in enumerate(_PAIR.finditer(line, m.end())):
        if n >= _MAX_PAIRS_PER_LINE:
            break
        key, value = pm.group(1), float(pm.group(2))
        if math.isfinite(value) and key.lower() not in _EPOCH_KEYS and key.lower() not in _TOTAL_KEYS:
            metrics[key] = value
    if epoch is None and total is None and not metrics:
        return None
    return epoch, total, metrics


def _parse_machine(rest: str) -> tuple[int | None, int | None, dict[str, float]] | None:
    """`GPUFLEET_METRICS {"epoch": 3, "total_epoch": 50, "loss": 0.41}`: exact control for trainers."""
    if not rest[:1].isspace():
        return None  # "GPUFLEET_METRICSX": not the prefix
    try:
        obj = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    epoch = total = None
    metrics: dict[str, float] = {}
    for key, value in list(obj.items())[:_MAX_PAIRS_PER_LINE]:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if key == "epoch":
            epoch = _bounded(int(value)) if value == int(value) else None
        elif key == "total_epoch":
            total = _bounded(int(value)) if value == int(value) else None
        elif _KEY.fullmatch(key):
            metrics[key] = float(value)
    if epoch is None and total is None and not metrics:
        return None
    return epoch, total, metrics


def _bounded(n: int) -> int | None:
    return n if 0 <= n <= _MAX_INT else None


class ProgressTracker:
    """Folds a byte stream of log output into a ProgressState.

    Lines end at \\n or \\r (tqdm redraws with \\r); a partial line is kept until its end
    arrives. Metrics merge across lines (validation metrics printed at the end of an epoch
    stay visible during the next one); at most `max_metrics` distinct keys are kept, first
    come first kept, so a chatty log cannot grow the record without bound.
    """

    def __init__(self, state: ProgressState | None = None, max_metrics: int = 32) -> None:
        self.state = state if state is not None else ProgressState()
        self.max_metrics = max_metrics
        self._buf = b""
        self._discarding = False  # inside an over-long line: drop bytes until its end

    def feed(self, data: bytes, now: float) -> bool:
        """Consume a chunk of output; True when the state changed."""
        if not data:
            return False
        buf = self._buf + data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut < 0:
            self._keep_tail(buf)
            return False
        complete, tail = buf[: cut + 1], buf[cut + 1 :]
        lines = complete.splitlines()
        if self._discarding and lines:
            lines = lines[1:]  # the rest of the over-long line
            self._discarding = False
        self._buf = b""
        self._keep_tail(tail)
        changed = False
        for raw in lines:
            if raw and self._apply(raw.decode("utf-8", errors="replace")):
                changed = True
        if changed:
            self.state.updated_at = now
        return changed

    def flush(self, now: float) -> bool:
        """Parse a final line that never got its line end (the stream ended)."""
        tail, self._buf = self._buf, b""
        if self._discarding or not tail:
            self._discarding = False
            return False
        changed = self._apply(tail.decode("utf-8", errors="replace"))
        if changed:
            self.state.updated_at = now
        return changed

    def _keep_tail(self, tail: bytes) -> None:
        if self._discarding:
            return
        if len(tail) > MAX_BUFFER:
            self._buf, self._discarding = b"", True
        else:
            self._buf = tail

    def _apply(self, line: str) -> bool:
        parsed = parse_line(line)
        if parsed is None:
            return False
        epoch, total, metrics = parsed
        st = self.state
        changed = False
        if epoch is not None and epoch != st.current_epoch:
            st.current_epoch, changed = epoch, True
        if total is not None and total != st.total_epoch:
            st.total_epoch, changed = total, True
        for key, value in metrics.items():
            old = st.metrics.get(key)
            if old is None and len(st.metrics) >= self.max_metrics:
                continue
            if old != value:
                st.metrics[key] = value
                changed = True
        return changed
