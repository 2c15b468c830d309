"""A download reads one regular file below an output folder, in chunks, never past its cap."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from gpufleet.agent.outputs import read_output

from gpufleet.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


def folder(tmp_path: Path) -> Path:
    out = tmp_path / "out" / "jobs" / "a"
    out.mkdir(parents=True)
    (out / "ckpt.pt").write_bytes(b"x" * 10)
    os.symlink("/etc", out / "etc")
    os.symlink("/etc", tmp_path / "out" / "linked")
    return tmp_path / "out"


def test_chunks_carry_the_whole_file_and_its_size(tmp_path: Path) -> None:
    got = list(read_output(folder(tmp_path), "jobs/a", "ckpt.pt", chunk=4))
    assert [d for d, _ in got] == [b"xxxx", b"xxxx", b"xx"] and {s for _, s in got} == {10}


def test_a_file_over_the_cap_is_refused_before_any_byte(tmp_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match="over the download cap of 9 bytes"):
        next(read_output(folder(tmp_path), "jobs/a", "ckpt.pt", max_bytes=9))


@pytest.mark.parametrize("output_dir, path, error", [
    ("jobs/a", "etc/passwd", FailedPrecondition),  # a link the job planted
    ("linked", "passwd", FailedPrecondition),  # a link as the output folder itself
    ("jobs/a", "missing", NotFound),
    ("jobs/a", "/etc/passwd", InvalidArgument),
    ("jobs/a", "../a/ckpt.pt", InvalidArgument),
    ("jobs/a", "", InvalidArgument),
])
def test_refused(tmp_path: Path, output_dir: str, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        next(read_output(folder(tmp_path), output_dir, path))
