"""Handing a job's output folder to the account the job runs as, without following a link a job
may have planted in its path.

Every component is opened with O_NOFOLLOW below the output root and the owner is changed on the
opened descriptor. With the shared job user the folder is 0750 (as before owners had uids). With an
owner's own uid (agent/owneruids.py) the owner's prefix `users/<owner>/` and the folder are 0700
and the owner's: jobs of other owners, which share the job user's group, cannot enter it, while the
owner's later attempts (same uid) read what earlier ones wrote.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.runtime.base import RuntimeError_

from gpufleet import safefs

USERS = "users"  # coordinator/tenancy.py: every owner's output lies under users/<owner>/


def owner_prefix(rel: str, owner: str) -> str:
    """`users/<owner>` when the folder `rel` lies in the owner's own prefix, else ''."""
    parts = PurePosixPath(rel).parts
    if owner and len(parts) >= 2 and parts[0] == USERS and parts[1] == owner:
        return f"{USERS}/{owner}"
    return ""


def _give(root: Path, rel: str, user: JobUser, mode: int, take_from: int | None = None) -> None:
    try:
        fd = safefs.make_dirs(root, rel, 0o755)
    except OSError as exc:
        raise RuntimeError_(f"cannot open the output folder without following links: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if take_from is not None and st.st_uid == take_from != user.uid:
            _take_tree(fd, take_from, user)
        if (st.st_uid, st.st_gid) != (user.uid, user.gid):
            os.fchown(fd, user.uid, user.gid)
        if st.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        raise RuntimeError_(f"cannot hand the output folder to uid {user.uid}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _take_tree(fd: int, old_uid: int, user: JobUser) -> None:
    """What `old_uid` (the shared job user) made below the folder becomes the owner's: a folder written
    before owners had uids stays the owner's to overwrite. Links are changed, never followed (fwalk
    checks each folder it enters is the one it listed)."""
    for _, dirs, files, dfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for name in dirs + files:
            try:
                if os.stat(name, dir_fd=dfd, follow_symlinks=False).st_uid == old_uid:
                    os.chown(name, user.uid, user.gid, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass  # removed meanwhile


def give_output_dir(output_root: Path | None, output_dir: Path, user: JobUser, owner: str = "",
                    own_uid: bool = False, shared_uid: int | None = None) -> None:
    """Make `output_dir` (and, with `own_uid`, the owner's prefix) the job's account's. `shared_uid`:
    the job user's uid; a folder it was given before becomes the owner's with its contents."""
    if user.is_root:
        return
    if output_root is None:
        raise RuntimeError_("the runtime needs the output root to hand a folder to the job's account")
    root = output_root.resolve()
    try:
        rel = str(output_dir.relative_to(root))
    except ValueError:
        raise RuntimeError_(f"output folder {output_dir} is outside {root}") from None
    if not own_uid:
        _give(root, rel, user, 0o750)
        return
    prefix = owner_prefix(rel, owner)
    if prefix:
        _give(root, prefix, user, 0o700)
    _give(root, rel, user, 0o700, take_from=shared_uid)
