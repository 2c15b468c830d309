"""Each job owner's own local uid (`--owner-uids`), so that one owner's jobs cannot signal or read
another's on a shared node.

With auth on, the coordinator sends every Launch the job's owner (its token's name). The agent maps
each owner to a uid from a range, once and for good (the `owner_uids` table of its store): the same
owner always gets the same uid, so a model's later attempts read their earlier checkpoints, and two
owners never share one. A uid that a local account has (/etc/passwd) is never handed out: a job must
not become a real user of the host. The primary gid stays the job user's group (`--job-user`), with
no supplementary groups; the owner's folder is made 0700 for that uid (agent/outputdirs.py), so the
shared group gives nothing.

Jobs without an owner (auth off) run as the shared `--job-user`, as before. `--owner-uids none`
turns the mapping off (every job runs as `--job-user`).
"""
from __future__ import annotations

import pwd
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gpufleet.agent.jobuser import JobUser

from gpufleet.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

DEFAULT_RANGE = "62000-62999"
OPTION = "--owner-uids"
_RANGE_RE = re.compile(r"(\d+)-(\d+)")
# Token names (coordinator/tokens.py) are letters, digits, '.', '_', '@', '-'; the agent accepts
# those and nothing that could mean a path or a control character.
_OWNER_CHARS = frozenset(string.ascii_letters + string.digits + "._@-")
_MAX_UID = 2**31 - 2  # (uid_t)-1 means "no change" to the kernel: never hand out anything near it


@dataclass(frozen=True)
class UidRange:
    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_range(spec: str) -> UidRange | None:
    """`--owner-uids`: "FIRST-LAST" (inclusive), or "none"/"" for off."""
    spec = spec.strip()
    if spec.lower() in ("", "none", "off"):
        return None
    m = _RANGE_RE.fullmatch(spec)
    if m is None:
        raise InvalidArgument(OPTION, f"must be FIRST-LAST (e.g. {DEFAULT_RANGE}) or none, got {spec!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if first < 1 or first > last or last > _MAX_UID:
        raise InvalidArgument(OPTION, f"must be a range of uids 1 <= FIRST <= LAST <= {_MAX_UID} (never root), "
                                      f"got {spec!r}")
    return UidRange(first, last)


def check_owner(owner: str) -> None:
    if len(owner) > 128 or not set(owner) <= _OWNER_CHARS or owner.startswith("."):
        raise InvalidArgument("owner", "must be empty or 1-128 letters, digits, '.', '_', '@', '-', not "
                                       f"starting with '.', got {owner[:80]!r}")


def in_passwd(uid: int) -> bool:
    """Whether a local account has `uid` (the name service: /etc/passwd and whatever nsswitch adds)."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def pick_uid(rng: UidRange, taken: Iterable[int], is_account: Callable[[int], bool]) -> int:
    """The lowest uid of `rng` neither given to another owner (`taken`) nor a local account's.
    ResourceExhausted, naming the option, when none is left."""
    used = set(taken)
    for uid in range(rng.first, rng.last + 1):
        if uid not in used and not is_account(uid):
            return uid
    raise ResourceExhausted(f"{OPTION} {rng}: every uid of the range is given to an owner or a local account "
                            f"({len(used)} owners on this node); widen the range on this agent")


class UidStore(Protocol):
    def assign_uid(self, owner: str, pick: Callable[[set[int]], int]) -> int:
        """The owner's uid; a new owner gets `pick(uids taken)`, stored in the same transaction."""
        ...


class OwnerUsers:
    """Who an owner's jobs run as: `base` (the job user) with the owner's own uid."""

    def __init__(self, store: UidStore, rng: UidRange, base: JobUser,
                 is_account: Callable[[int], bool] = in_passwd, gid_is_uid: bool = False) -> None:
        """`gid_is_uid`: no job account to take a group from (a docker-only node)."""
        self.store = store
        self.rng = rng
        self.base = base
        self.is_account = is_account
        self.gid_is_uid = gid_is_uid

    def user_for(self, owner: str) -> JobUser:
        check_owner(owner)
        uid = self.store.assign_uid(owner, lambda taken: pick_uid(self.rng, taken, self.is_account))
        if self.is_account(uid):
            # Given out before a local account took it: running the job as that account is not ours to do.
            raise FailedPrecondition(f"{OPTION}: uid {uid} of owner {owner!r} now belongs to the local account "
                                     f"{_account_name(uid)!r}; remove that account or move it out of {self.rng}")
        return JobUser(owner, uid, uid if self.gid_is_uid else self.base.gid, self.base.home)


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
