"""Who process-runtime jobs run as: never the agent's own (root) identity unless an admin says so.

The agent runs as root (it needs the GPUs, cgroups and, for the docker runtime, the engine); a job
is someone else's code. The job wrapper stays root so that what the agent keeps for the job (its
exit record, handle and logs, in the agent's 0700 state dir) is out of the job's reach, and it
drops the job's own process to this user: no supplementary groups, the account's uid and gid.
"""
from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from gpufleet.errors import InvalidArgument

DEFAULT_JOB_USER = "gpufleet-job"


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def env(self) -> dict[str, str]:
        """HOME/USER/LOGNAME for the job (never the agent's own)."""
        return {"HOME": self.home or "/", "USER": self.name, "LOGNAME": self.name}


def resolve(spec: str, allow_root: bool) -> JobUser:
    """The account named by --job-user ("name", "uid" or "uid:gid"). Refuses root without
    --allow-root-jobs, and a name that does not exist (no silent fallback to root)."""
    spec = spec.strip() or DEFAULT_JOB_USER
    name, _, group = spec.partition(":")
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        user = JobUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    except KeyError:
        if not name.isdigit():
            raise InvalidArgument("--job-user", f"no local account {name!r}: create it (useradd --system "
                                  f"--no-create-home --shell /usr/sbin/nologin {name}, or the shipped "
                                  "sysusers.d file) or name another one; --allow-root-jobs runs jobs as "
                                  "root instead") from None
        user = JobUser(name, int(name), int(name), "/")
    if group:
        if not group.isdigit():
            raise InvalidArgument("--job-user", f"the group must be a number (uid:gid), got {group!r}")
        user = JobUser(user.name, user.uid, int(group), user.home)
    if (user.uid == 0 or user.gid == 0) and not allow_root:
        raise InvalidArgument("--job-user", f"{spec!r} is root: jobs would own this host; pass --allow-root-jobs "
                              "only if every job on this node is trusted")
    return user


def for_agent(spec: str, allow_root: bool) -> JobUser:
    """resolve(), except that an agent not running as root cannot switch users: its jobs run as
    itself (the unprivileged agent is then the boundary)."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return JobUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    name = spec.strip() or DEFAULT_JOB_USER
    if allow_root and name in ("root", "0"):
        return JobUser("root", 0, 0, "/root")
    if allow_root and name == DEFAULT_JOB_USER:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return JobUser("root", 0, 0, "/root")  # the admin allowed root and made no job account
    return resolve(name, allow_root)


def blocked_on_the_way(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder from / down to `path` that `uid`:`gid` may not pass through (no search bit
    for it), or None when the whole way is open. A job started in its output folder below such a
    folder still runs (the agent enters the folder before it drops to the job's account), but a
    program that resolves its working directory again by name (a pyenv shim, `cd "$PWD"`) fails."""
    way = [*reversed(path.parents), path]
    for folder in way:
        try:
            st = folder.stat()
        except OSError:
            return None  # not made yet: the agent makes it, traversable, below a folder it could read
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if uid != 0 and not st.st_mode & bit:
            return folder
    return None
