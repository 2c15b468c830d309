"""Whether the job's account can pass every folder down to the output root (a start-up warning)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpufleet.agent.jobuser import blocked_on_the_way

UID, GID = 64999, 64998  # an account that owns nothing here


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder straight under /tmp: pytest's own base folder is private, which would block every way."""
    d = Path(tempfile.mkdtemp(prefix="gpufleet-way-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_a_private_parent_blocks_the_way(tmp_path: Path) -> None:
    private = tmp_path / "private"
    out = private / "out"
    out.mkdir(parents=True)
    tmp_path.chmod(0o755)
    private.chmod(0o700)
    assert blocked_on_the_way(out, UID, GID) == private
    private.chmod(0o711)  # search only: the way is open, the listing is not
    assert blocked_on_the_way(out, UID, GID) is None


def test_the_owner_and_group_bits_count_for_their_account(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    os.chown(mine, UID, 0)
    assert blocked_on_the_way(mine, UID, GID) is None
    os.chown(mine, 0, GID)
    mine.chmod(0o710)
    assert blocked_on_the_way(mine, UID, GID) is None
    assert blocked_on_the_way(mine, UID, GID + 1) == mine


def test_a_folder_not_made_yet_and_root_are_never_blocked(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    assert blocked_on_the_way(tmp_path / "later" / "out", UID, GID) is None
    tmp_path.chmod(0o700)
    assert blocked_on_the_way(tmp_path, 0, 0) is None
    tmp_path.chmod(0o755)
