"""Path rules shared by the agent: a job touches nothing outside the configured roots."""
from __future__ import annotations

import os
from pathlib import Path

from gpufleet.errors import InvalidArgument


def relative_under(root: Path, rel: str, field: str, *, allow_empty: bool = False) -> Path:
    """Resolve `rel` below `root`, refusing absolute paths, "..", NUL bytes and symlink escapes."""
    if not rel:
        if allow_empty:
            return root.resolve()
        raise InvalidArgument(field, "must not be empty")
    if "\x00" in rel:
        raise InvalidArgument(field, "must not contain NUL bytes")
    if len(rel) > 4096:
        raise InvalidArgument(field, "must be at most 4096 characters")
    if os.path.isabs(rel) or rel.startswith("~"):
        raise InvalidArgument(field, f"must be relative to its root, got absolute path {rel!r}")
    parts = Path(rel).parts
    if ".." in parts:
        raise InvalidArgument(field, f"must not contain '..' ({rel!r})")
    base = root.resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise InvalidArgument(field, f"resolves outside its root ({rel!r} follows a link out of it)")
    return full
