"""`gpufleet jobs download JOB PATH [-O FILE]`: one file of a job's output folder (the result zip, a
checkpoint, val.csv), fetched through the coordinator from the job's node.

The file appears complete or not at all: it is written to a temporary file beside FILE, checked
against the size the agent announced, flushed to disk and only then renamed over FILE, so an
interrupted download never leaves a truncated checkpoint where a good one is expected.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from gpufleet.cli.base import coord, err, jobs_app, print_json, rpc_errors
from gpufleet.cli.settings import CTX
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import coordinator_pb2 as cpb


class Incomplete(Exception):
    """The stream ended before the announced size arrived."""


def write_atomically(chunks: Iterable[apb.OutputChunk], target: Path) -> int:
    """Write the chunks to `target` (replacing it) only once all arrived; the bytes written."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        size, got = -1, 0
        with os.fdopen(fd, "wb") as f:
            for i, chunk in enumerate(chunks):
                if i == 0:
                    size = chunk.size
                f.write(chunk.data)
                got += len(chunk.data)
            if got != size:
                raise Incomplete(f"received {got} of {max(size, 0)} bytes")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain `>` redirect would make it (mkstemp makes 0600)
        os.replace(tmp, target)
        return got
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@jobs_app.command("download")
def jobs_download(
    job_id: Annotated[str, typer.Argument(help="the job attempt's id")],
    path: Annotated[str, typer.Argument(help="the file, relative to the job's output folder (e.g. result.zip, "
                                             "checkpoints/best.pt, val.csv)")],
    output_file: Annotated[str, typer.Option("--output-file", "-O", help="where to save it (default: the file's "
                                                                          "name in the current folder; - for "
                                                                          "stdout)", show_default=False)] = "",
) -> None:
    """Download one file of a job's output folder (its owner and admins only, like its logs). Symbolic
    links are refused, never followed. JSON: {"job_id", "path", "file", "bytes"}."""
    stream = coord().DownloadOutput(cpb.DownloadOutputRequest(job_id=job_id, path=path), timeout=None)
    if output_file == "-":
        with rpc_errors():
            for chunk in stream:
                sys.stdout.buffer.write(chunk.data)
        sys.stdout.flush()
        return
    target = Path(output_file or Path(path).name).expanduser()
    if target.is_dir():
        target = target / Path(path).name
    if not target.parent.is_dir():
        err.print(f"[red]error:[/] -O {target}: the folder {target.parent} does not exist")
        raise typer.Exit(1)
    try:
        with rpc_errors():
            written = write_atomically(stream, target)
    except Incomplete as exc:
        err.print(f"[red]error:[/] {job_id} {path}: the download was cut short ({exc}); {target} is unchanged")
        raise typer.Exit(1) from None
    if CTX.output == "json":
        print_json({"job_id": job_id, "path": path, "file": str(target), "bytes": written})
    else:
        err.print(f"saved {path} of job {job_id} to {target} ({written} bytes)", highlight=False)
