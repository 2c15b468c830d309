"""Owners' own uids (agent/owneruids.py): the range option, picking a uid, stability, refusals."""
from __future__ import annotations

import pwd
from pathlib import Path

import pytest
from gpufleet.agent import outputdirs
from gpufleet.agent.jobuser import JobUser
from gpufleet.agent.memstore import MemoryStore
from gpufleet.agent.owneruids import OwnerUsers, UidRange, check_owner, in_passwd, parse_range, pick_uid
from gpufleet.agent.store import Store

from gpufleet.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

BASE = JobUser("gpufleet-job", 999, 995, "/nonexistent")


@pytest.mark.parametrize("spec, want", [("62000-62999", UidRange(62000, 62999)), (" 7-7 ", UidRange(7, 7)),
                                        ("none", None), ("", None), ("OFF", None)])
def test_the_range_option(spec: str, want: UidRange | None) -> None:
    assert parse_range(spec) == want


@pytest.mark.parametrize("spec", ["62000", "0-10", "10-5", "a-b", "-5-10", "1-4294967295"])
def test_a_bad_range_is_refused_naming_the_option(spec: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_range(spec)
    assert e.value.field == "--owner-uids"


def test_the_lowest_uid_neither_taken_nor_a_local_accounts_is_picked() -> None:
    accounts = {62000, 62002}
    assert pick_uid(UidRange(62000, 62010), {62001}, accounts.__contains__) == 62003
    assert pick_uid(UidRange(62000, 62010), set(), accounts.__contains__) == 62001


def test_real_local_accounts_are_skipped() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    assert in_passwd(nobody) and not in_passwd(nobody + 1)
    assert pick_uid(UidRange(nobody, nobody + 1), set(), in_passwd) == nobody + 1


def test_an_exhausted_range_says_which_option_to_widen() -> None:
    with pytest.raises(ResourceExhausted) as e:
        pick_uid(UidRange(5, 6), {5}, lambda uid: uid == 6)
    assert str(e.value).startswith("--owner-uids 5-6: every uid of the range is given")
    assert "widen the range" in str(e.value)


def test_each_owner_keeps_one_uid_across_agent_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    users = OwnerUsers(store, UidRange(62000, 62999), BASE, is_account=lambda uid: False)
    alice, bob = users.user_for("alice"), users.user_for("bob")
    assert (alice.uid, bob.uid) == (62000, 62001)
    assert (alice.gid, alice.home, alice.name) == (BASE.gid, BASE.home, "alice")
    store.close()
    store = Store(tmp_path / "agent.db")
    try:
        again = OwnerUsers(store, UidRange(62000, 62999), BASE, is_account=lambda uid: False)
        assert again.user_for("bob").uid == 62001 and again.user_for("alice").uid == 62000
        assert again.user_for("carol").uid == 62002
    finally:
        store.close()


def test_a_uid_a_local_account_took_later_is_refused() -> None:
    accounts: set[int] = set()
    users = OwnerUsers(MemoryStore(), UidRange(62000, 62999), BASE, is_account=accounts.__contains__)
    assert users.user_for("alice").uid == 62000
    accounts.add(62000)
    with pytest.raises(FailedPrecondition) as e:
        users.user_for("alice")
    assert "--owner-uids: uid 62000 of owner 'alice' now belongs to the local account" in str(e.value)
    assert users.user_for("bob").uid == 62001  # new owners still get a free one


def test_a_docker_node_without_a_job_account_uses_the_uid_as_group() -> None:
    users = OwnerUsers(MemoryStore(), UidRange(62000, 62999), BASE, is_account=lambda uid: False, gid_is_uid=True)
    u = users.user_for("alice")
    assert (u.uid, u.gid) == (62000, 62000)


@pytest.mark.parametrize("owner", ["../x", "a/b", ".hidden", "x" * 129, "al ice", "a\nb"])
def test_an_owner_that_could_mean_a_path_is_refused(owner: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_owner(owner)
    assert e.value.field == "owner"


def test_the_owners_prefix_is_only_its_own_users_folder() -> None:
    assert outputdirs.owner_prefix("users/alice/jobs/a", "alice") == "users/alice"
    assert outputdirs.owner_prefix("users/alice", "alice") == "users/alice"
    assert outputdirs.owner_prefix("users/alice/shared", "root") == ""
    assert outputdirs.owner_prefix("jobs/a", "alice") == ""
    assert outputdirs.owner_prefix("users/alice/x", "") == ""
