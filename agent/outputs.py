"""Reading one file out of a job's output folder for a download (`gpufleet jobs download`).

A job controls everything in its output folder, so the file is opened with gpufleet/safefs.py: no
symbolic link anywhere on the way (a link to /etc/shadow or to another job's folder is refused, not
followed), nothing above the output root, regular files only (a FIFO would block the reader). The
size is taken once the file is open and no more than that is sent, so a file the job still appends
to ends where it was, and a file over the cap is refused before a byte is sent.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from gpufleet import safefs
from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

MAX_OUTPUT_BYTES = 16 << 30  # a big checkpoint, not a whole disk
CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB message limit


def check_path(path: str, field: str = "path") -> None:
    """A path below the output folder: relative, no '..', no NUL. Pure."""
    if not path or path in (".", "/"):
        raise InvalidArgument(field, "must name a file in the job's output folder (e.g. result.zip)")
    if len(path) > 4096:
        raise InvalidArgument(field, "must be at most 4096 characters")
    if "\x00" in path:
        raise InvalidArgument(field, "must not contain NUL bytes")
    if path.startswith("/") or path.startswith("~"):
        raise InvalidArgument(field, f"must be relative to the job's output folder, got {path!r}")
    if ".." in path.split("/"):
        raise InvalidArgument(field, f"must not contain '..' ({path!r})")


def read_output(output_root: Path, output_dir: str, path: str, max_bytes: int = 0,
                chunk: int = CHUNK_BYTES) -> Iterator[tuple[bytes, int]]:
    """(data, size) chunks of `output_dir/path` below `output_root`; size is the whole file's, the same
    on every chunk. Raises NotFound, FailedPrecondition (a link, not a regular file) or
    ResourceExhausted (over the cap) before the first chunk."""
    check_path(output_dir, "output_dir")
    check_path(path)
    if max_bytes < 0:
        raise InvalidArgument("max_bytes", f"must be >= 0, got {max_bytes}")
    cap = min(max_bytes or MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES)
    fd = _open(output_root, output_dir, path)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise ResourceExhausted(f"{path} is {size} bytes, over the download cap of {cap} bytes")
        sent = 0
        while True:
            data = os.pread(fd, min(chunk, size - sent), sent) if sent < size else b""
            if not data:
                break
            sent += len(data)
            yield data, size
        if sent == 0:
            yield b"", 0  # an empty file still answers once, with its size
    finally:
        os.close(fd)


def _open(output_root: Path, output_dir: str, path: str) -> int:
    """The file's descriptor, each OSError turned into what the caller can act on."""
    rel = f"{output_dir.strip('/')}/{path}"
    try:
        return safefs.open_regular(output_root, rel)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotFound(f"{path}: no such file in the job's output folder {output_dir}") from None
        if exc.errno == errno.ELOOP:
            raise FailedPrecondition(f"{path}: is a symbolic link or passes through one; only regular files "
                                     f"below the output folder {output_dir} are served (no link is followed)"
                                     ) from None
        if exc.errno == errno.EINVAL:
            raise FailedPrecondition(f"{path}: not a regular file (a folder, FIFO or device) in the output "
                                     f"folder {output_dir}") from None
        if exc.errno == errno.EXDEV:
            raise InvalidArgument("path", f"{path!r} leaves the output folder {output_dir}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise FailedPrecondition(f"{path}: the agent may not read it (permission denied)") from None
        raise
