"""The output probe: decides from a job's output folder whether training finished.

Rules and reason strings come from the system this replaces and are a contract (the coordinator
and old dashboards match on them): `ok`, `output-dir-missing`, `total-epoch-missing`,
`val.csv-missing`, `val.csv-lines-mismatch lines=N expected=M`, `probe-error`.

Pure functions over the file system, no global state; the servicer converts the dataclasses.
The probe never raises: any unexpected error becomes the `probe-error` verdict (and is logged).

The folder is the job's: nothing in it is trusted. The folder is opened without following a link,
every file below it through gpufleet.safefs (no symlink anywhere in the path, regular files only),
and every read is capped (MAX_CSV_BYTES, MAX_ENTRIES), so a planted link to a root-only file never
reaches a metric name or a reason, and a sparse 1 GiB val.csv costs a bounded read.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet import safefs

log = logging.getLogger("gpufleet.agent.probe")

MAX_ROWS_PER_FILE = 100_000
# The most read of one metrics csv (val.csv lines are counted within it too), and the most folder
# entries looked at: a probe's cost does not grow with what a job writes.
MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 100_000
# Epoch counts travel as int32 (ProbeResult.total_epoch/expected_lines): a larger one cannot be answered.
MAX_INT32 = 2**31 - 1
METRIC_FILES = (("train", "train.csv"), ("val", "val.csv"), ("test", "test.csv"))

# Resume points: epoch_12.pth, epoch-12.pth, epoch12.pth, checkpoint_12.pth.
_EPOCH_CKPT = re.compile(r"(?:epoch[_-]?|checkpoint[_-]?)(\d{1,9})\.pth", re.IGNORECASE | re.ASCII)
# Default "higher is better" metric names (substring match, case-insensitive).
_MAX_HINTS = ("accuracy", "acc", "map", "f1", "iou", "auc", "dice")
_MIN_HINTS = ("loss", "err")  # "err" covers "error"


@dataclass
class MetricRow:
    split: str
    epoch: int
    values: dict[str, float]


@dataclass
class ProbeVerdict:
    completed: bool
    reason: str
    val_lines: int = 0
    expected_lines: int = 0
    checkpoints: int = 0
    best_checkpoint: str = ""
    has_result_zip: bool = False
    metrics: list[MetricRow] = field(default_factory=list)
    best_epoch: int = 0
    best_metric_key: str = ""
    best_metric_mode: str = ""
    latest_checkpoint_epoch: int = 0
    latest_checkpoint: str = ""
    total_epoch: int = 0


def probe_outputs(
    folder: Path,
    total_epoch: int = 0,
    val_interval: int = 1,
    params_json: str = "",
    best_metric_key: str = "",
    best_metric_mode: str = "",
) -> ProbeVerdict:
    """Judge `folder` (the job's absolute output folder). Never raises."""
    total = 0
    try:
        params = _load_params(params_json)
        total = total_epoch if total_epoch > 0 else _param_int(params, "total_epoch", "totalEpoch")
        if not folder.is_dir():
            return ProbeVerdict(False, "output-dir-missing", total_epoch=total)
        try:
            dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):  # a link in place of the folder
                return ProbeVerdict(False, "output-dir-missing", total_epoch=total)
            raise
        try:
            return _judge(dirfd, total, val_interval, params, best_metric_key, best_metric_mode)
        finally:
            os.close(dirfd)
    except Exception:  # noqa: BLE001 - the verdict itself reports the failure
        log.exception("probe failed", extra={"fields": {"folder": str(folder)}})
        return ProbeVerdict(False, "probe-error", total_epoch=total)


def _judge(dirfd: int, total: int, val_interval: int, params: dict[str, Any], best_metric_key: str,
           best_metric_mode: str) -> ProbeVerdict:
        verdict = ProbeVerdict(False, "", total_epoch=total)
        _scan_files(dirfd, verdict)
        texts = {name: _read_text(dirfd, name) for _, name in METRIC_FILES}
        val_rows = _read_metrics(texts, verdict)
        _pick_best(val_rows, best_metric_key, best_metric_mode, verdict)

        if total <= 0:
            verdict.reason = "total-epoch-missing"
            return verdict
        val_text = texts["val.csv"]
        if val_text is None:
            verdict.reason = "val.csv-missing"
            return verdict
        interval = val_interval
        if interval == 0:  # unset in the request: the job's own params may say
            interval = _param_int(params, "val_interval", "valInterval")
        interval = max(interval, 1)
        verdict.val_lines = _count_val_lines(val_text)
        verdict.expected_lines = math.ceil(total / interval)
        if verdict.val_lines == verdict.expected_lines:
            verdict.completed, verdict.reason = True, "ok"
        else:
            verdict.reason = (f"val.csv-lines-mismatch lines={verdict.val_lines} "
                              f"expected={verdict.expected_lines}")
        return verdict


def _read_text(dirfd: int, name: str) -> str | None:
    """A metrics file's first MAX_CSV_BYTES as text; None when it is missing, a link or not a
    regular file (a planted link counts as missing: its target is never read)."""
    try:
        data = safefs.read_capped(dirfd, name, MAX_CSV_BYTES)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EINVAL, errno.ENOTDIR, errno.EXDEV, errno.EACCES):
            return None
        raise
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="replace")


def _load_params(params_json: str) -> dict[str, Any]:
    if not params_json.strip():
        return {}
    try:
        value = json.loads(params_json)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _param_int(params: dict[str, Any], *keys: str) -> int:
    """First key holding a whole number in 1..MAX_INT32 (int, integral float or numeric string), else 0.

    Larger or non-finite values count as missing: the verdict must fit its int32 fields.
    """
    for key in keys:
        value = params.get(key)
        if isinstance(value, bool):  # bool is an int subclass; True is not "1 epoch"
            continue
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, int | float) and value == int(value) and 0 < value <= MAX_INT32:
            return int(value)
    return 0


def _count_val_lines(text: str) -> int:
    """Lines after the header that hold anything but whitespace (the old system's rule)."""
    lines = text.splitlines()
    return sum(1 for line in lines[1:] if line.strip())


def _scan_files(folder: int, verdict: ProbeVerdict) -> None:
    """Checkpoints and result zips in the folder and its direct subfolders (e.g. checkpoints/).

    One level covers the layouts the old trainers wrote; deeper trees (prediction images) are
    not walked, so a probe stays cheap however much a job writes.
    """
    best: list[str] = []
    latest_epoch, latest = 0, ""
    for rel in _files_two_levels(folder):
        name = rel.rsplit("/", 1)[-1]
        lower = name.lower()
        if lower.endswith(".zip"):
            verdict.has_result_zip = True
        if not lower.endswith(".pth"):
            continue
        verdict.checkpoints += 1
        if "best" in lower:
            best.append(rel)
        m = _EPOCH_CKPT.fullmatch(name)
        if m and int(m.group(1)) > latest_epoch:
            latest_epoch, latest = int(m.group(1)), rel
    # Prefer best*.pth over *best*.pth, then the top level, then the name: stable across runs.
    best.sort(key=lambda r: (not r.rsplit("/", 1)[-1].lower().startswith("best"), "/" in r, r))
    verdict.best_checkpoint = best[0] if best else ""
    verdict.latest_checkpoint_epoch, verdict.latest_checkpoint = latest_epoch, latest


def _files_two_levels(folder: int) -> list[str]:
    """Regular files (not links) at the top level and one level down, as paths relative to the
    open folder `folder`; at most MAX_ENTRIES entries are looked at."""
    out: list[str] = []
    subdirs: list[str] = []
    seen = 0
    with os.scandir(folder) as it:
        for entry in it:
            seen += 1
            if seen > MAX_ENTRIES:
                break
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                out.append(entry.name)
    top = len(out)
    for sub in sorted(subdirs):
        if seen > MAX_ENTRIES:
            break
        try:
            subfd = safefs.open_beneath(folder, sub, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # an unreadable (or swapped) subfolder must not hide the top-level verdict
            continue
        try:
            with os.scandir(subfd) as it:
                for e in it:
                    seen += 1
                    if seen > MAX_ENTRIES:
                        break
                    if e.is_file(follow_symlinks=False):
                        out.append(f"{sub}/{e.name}")
        except OSError:
            continue
        finally:
            os.close(subfd)
    # Top level first so ties (same epoch in two folders) resolve to the top-level file.
    return sorted(out[:top]) + out[top:]


def _read_metrics(texts: dict[str, str | None], verdict: ProbeVerdict) -> list[MetricRow]:
    val_rows: list[MetricRow] = []
    for split, name in METRIC_FILES:
        text = texts.get(name)
        if text is not None:
            rows = parse_metrics_text(text, split, name)
            verdict.metrics.extend(rows)
            if split == "val":
                val_rows = rows
    return val_rows


def parse_metrics_csv(path: Path, split: str, max_rows: int = MAX_ROWS_PER_FILE) -> list[MetricRow]:
    """parse_metrics_text of a file, opened without following a link and read up to MAX_CSV_BYTES."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = safefs.read_fd(fd, MAX_CSV_BYTES)
    finally:
        os.close(fd)
    return parse_metrics_text(data.decode("utf-8-sig", errors="replace"), split, str(path), max_rows)


def parse_metrics_text(text: str, split: str, where: str = "", max_rows: int = MAX_ROWS_PER_FILE) -> list[MetricRow]:
    """Rows of a metrics csv: header = metric names, `epoch` column or 1-based row number.

    Blank rows do not take a row number (they do not count as val lines either); rows without
    a single finite numeric cell are dropped but keep their number, so row N stays line N.
    """
    rows: list[MetricRow] = []
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            epoch_col = next((i for i, h in enumerate(header) if h.lower() == "epoch"), -1)
            columns = [(i, h) for i, h in enumerate(header) if h and i != epoch_col]
            number = 0
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                number += 1
                values: dict[str, float] = {}
                for i, key in columns:
                    if i < len(cells):
                        v = _finite(cells[i])
                        if v is not None:
                            values[key] = v
                if not values:
                    continue
                epoch = number
                if 0 <= epoch_col < len(cells):
                    e = _finite(cells[epoch_col])
                    if e is not None and e == int(e) and 0 <= e < 2**31:
                        epoch = int(e)
                rows.append(MetricRow(split, epoch, values))
                if len(rows) >= max_rows:
                    break
        except csv.Error as exc:  # a torn or odd file: keep the rows read so far
            log.warning("metrics csv unreadable past row %d: %s", len(rows), exc,
                        extra={"fields": {"path": where}})
    return rows


def _finite(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    # nan/inf cannot be compared for "best" and do not survive JSON; treat as non-numeric.
    return v if math.isfinite(v) else None


def _default_mode(key: str) -> str:
    lower = key.lower()
    return "min" if any(h in lower for h in _MIN_HINTS) else "max"


def _pick_best(rows: list[MetricRow], key: str, mode: str, verdict: ProbeVerdict) -> None:
    if not key:
        key, mode = _default_key(rows)
        if not key:
            return
    if mode not in ("min", "max"):
        mode = _default_mode(key)
    best: tuple[float, int] | None = None
    for row in rows:
        v = row.values.get(key)
        if v is None:
            continue
        score = v if mode == "min" else -v
        if best is None or score < best[0]:  # strict: ties keep the earliest epoch
            best = (score, row.epoch)
    if best is not None:
        verdict.best_epoch, verdict.best_metric_key, verdict.best_metric_mode = best[1], key, mode


def _default_key(rows: list[MetricRow]) -> tuple[str, str]:
    """val_loss, then loss (lowest), else the first accuracy/mAP/f1-like column (highest)."""
    seen: dict[str, None] = {}  # ordered: header order of the first rows that hold each key
    for row in rows:
        for k in row.values:
            seen.setdefault(k, None)
    by_lower = {k.lower(): k for k in reversed(list(seen))}
    for name in ("val_loss", "loss"):
        if name in by_lower:
            return by_lower[name], "min"
    for k in seen:
        lower = k.lower()
        if any(h in lower for h in _MAX_HINTS) and not any(h in lower for h in _MIN_HINTS):
            return k, "max"
    return "", ""
