"""Structured logging: one event a line, JSON when stderr is not a TTY, ids as fields.

Use `event(log, "job.started", job_id=..., attempt=...)`; plain `log.info(...)` works too.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        kv = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname[:4]} " \
               f"{record.name} {record.getMessage()}" + (f" {kv}" if kv else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LEVELS = ("debug", "info", "warning", "error")


def check_level(level: str) -> None:
    """Refuse a --log-level logging does not know (before the daemon makes anything on disk)."""
    if level.lower() not in LEVELS:
        from gpufleet.errors import InvalidArgument

        raise InvalidArgument("--log-level", f"must be one of {', '.join(LEVELS)}, got {level!r}")


def setup(level: str = "info", json_output: bool | None = None) -> None:
    """Configure the root logger once for a daemon."""
    check_level(level)
    if json_output is None:
        json_output = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
