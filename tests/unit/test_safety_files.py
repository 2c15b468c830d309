"""Issue 13: files a job controls are opened, not trusted (gpufleet.safefs, the probe, log tails)."""
from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpufleet.agent import probe
from gpufleet.agent.probe import probe_outputs

from gpufleet import safefs


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every rule holds with openat2 and with the O_NOFOLLOW walk older kernels get."""
    monkeypatch.setattr(safefs, "_have_openat2", None if request.param == "openat2" else False)
    yield request.param


def test_links_anywhere_in_the_path_are_refused(tmp_path: Path, mode: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash\n")
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_text("ok")
    os.symlink(secret, root / "leaf")
    os.symlink(tmp_path, root / "dir")
    os.symlink("real", root / "inner")  # even a link that stays inside is not followed
    assert safefs.read_capped(root, "real/f", 100) == b"ok"
    for rel in ("leaf", "dir/secret", "inner/f"):
        with pytest.raises(OSError) as exc:
            safefs.read_capped(root, rel, 100)
        assert exc.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR), rel
    for rel in ("../secret", "/etc/passwd", "real/../../secret"):
        with pytest.raises(OSError):
            safefs.read_capped(root, rel, 100)


def test_only_regular_files_and_reads_are_capped(tmp_path: Path, mode: str) -> None:
    os.mkfifo(tmp_path / "fifo")  # would block a plain open() forever
    with pytest.raises(OSError) as exc:
        safefs.read_capped(tmp_path, "fifo", 10)
    assert exc.value.errno == errno.EINVAL
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    assert len(safefs.read_capped(tmp_path, "big", 100)) == 100


def test_make_dirs_does_not_follow_a_planted_link(tmp_path: Path, mode: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    os.symlink(outside, root / "a" / "b")
    with pytest.raises(OSError):
        safefs.make_dirs(root, "a/b/c")
    assert not (outside / "c").exists()
    fd = safefs.make_dirs(root, "x/y")
    os.close(fd)
    assert (root / "x" / "y").is_dir()


@pytest.mark.parametrize("text, lines, want", [
    (b"", 1, b""), (b"a\nb\nc\n", 1, b"c\n"), (b"a\nb\nc", 2, b"b\nc"), (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
    (b"a\n\nb\n", 2, b"\nb\n"), (b"only", 1, b"only"), (b"a\nb\n", 0, b"a\nb\n"),
])
def test_tail_reads_lines_from_the_end(tmp_path: Path, text: bytes, lines: int, want: bytes) -> None:
    (tmp_path / "log").write_bytes(text)
    assert safefs.tail_file(tmp_path, "log", 1 << 20, lines) == want


def test_tail_of_a_huge_file_costs_what_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open(path, "wb") as f:
        f.truncate(2 * 1024**3)  # 2 GiB of NULs, sparse: a whole-file read would need 2 GiB
        f.seek(0, os.SEEK_END)
        f.write(b"\nlast line\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert safefs.tail_file(tmp_path, "log", 1 << 20, 1) == b"last line\n"
    assert len(safefs.tail_file(tmp_path, "log", 1 << 20, 0)) == 1 << 20
    # No newline in 2 GiB: the tail stops at its byte cap.
    assert len(safefs.tail_file(tmp_path, "log", 1 << 20, 3)) <= 1 << 20
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 256 * 1024


def test_probe_never_follows_planted_links(tmp_path: Path, mode: str) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root_secret_name,other\n1,2\n")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(secret, out / "val.csv")
    os.symlink(secret, out / "train.csv")
    (out / "ckpt").mkdir()
    os.symlink(secret, out / "ckpt" / "epoch_9.pth")
    verdict = probe_outputs(out, total_epoch=3)
    assert verdict.reason == "val.csv-missing"
    assert all("root_secret_name" not in row.values for row in verdict.metrics)
    assert verdict.checkpoints == 0
    # The folder itself swapped for a link: judged missing, never read through.
    real = tmp_path / "real"
    real.mkdir()
    (real / "val.csv").write_text("epoch,loss\n1,0.5\n")
    os.symlink(real, tmp_path / "linked")
    assert probe_outputs(tmp_path / "linked", total_epoch=1).reason == "output-dir-missing"


def test_probe_reads_a_sparse_huge_val_csv_within_its_cap(tmp_path: Path) -> None:
    with open(tmp_path / "val.csv", "wb") as f:
        f.write(b"epoch,loss\n1,0.5\n")
        f.truncate(1024**3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    verdict = probe_outputs(tmp_path, total_epoch=1)
    assert verdict.reason.startswith(("ok", "val.csv-lines-mismatch"))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 8 * probe.MAX_CSV_BYTES // 1024
