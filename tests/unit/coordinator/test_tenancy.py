"""coordinator/tenancy.py: the tenant rules as a table (the real daemons are in test_safety_tenants.py)."""
from __future__ import annotations

from typing import Any

import pytest
from gpufleet.coordinator import tenancy

from gpufleet.auth import Principal
from gpufleet.errors import PermissionDenied
from gpufleet.v1 import common_pb2 as pb

ALICE = Principal("alice", "user", "token")
VAL = Principal("val", "viewer", "token")
ROOT = Principal("root", "admin", "token")


def owns(uuid: str) -> bool:
    return uuid == "mine"


@pytest.mark.parametrize(("who", "output", "want"), [
    (ALICE, "jobs/a", "users/alice/jobs/a"),
    (ALICE, "users/alice/x", "users/alice/x"),
    (ALICE, "./users/alice/x", "./users/alice/x"),
    (ALICE, "usersx/y", "users/alice/usersx/y"),
    (ROOT, "users/bob/x", "users/bob/x"),
    (ROOT, "jobs/r", "jobs/r"),
    (None, "jobs/a", "jobs/a"),  # auth off: as written
])
def test_outputs_are_placed_under_the_owners_folder(who: Principal | None, output: str, want: str) -> None:
    assert tenancy.scope_spec({"output_dir": output}, who, owns)["output_dir"] == want


@pytest.mark.parametrize(("spec", "field"), [
    ({"output_dir": "users/bob/x"}, "spec.output_dir"),
    ({"output_dir": "users"}, "spec.output_dir"),
    ({"output_dir": "x", "mounts": [{"source": "users/bob/data"}]}, "spec.mounts[0].source"),
    ({"output_dir": "x", "mounts": [{"source": "shared"}, {"source": "tmp/m1"}]}, "spec.mounts[1].source"),
    ({"output_dir": "x", "dataset": "theirs"}, "spec.dataset"),
])
def test_another_users_folder_tmp_and_datasets_are_refused(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(PermissionDenied) as err:
        tenancy.scope_spec(spec, ALICE, owns)
    assert err.value.field == field


def test_shared_data_and_the_callers_own_are_readable() -> None:
    spec = {"output_dir": "x", "mounts": [{"source": "shared/imgs"}, {"source": "users/alice/d"}], "dataset": "mine"}
    assert tenancy.scope_spec(spec, ALICE, owns)["mounts"] == spec["mounts"]
    assert tenancy.scope_spec({}, ALICE, owns, default_output="models")["output_dir"] == "users/alice/models"


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b"])
def test_a_name_that_is_no_folder_owns_nothing(name: str) -> None:
    with pytest.raises(PermissionDenied):
        tenancy.home(name)


def test_secrets_are_the_owners_and_admins() -> None:
    assert tenancy.may_see_secrets(ALICE, "alice")
    assert not tenancy.may_see_secrets(ALICE, "bob")
    assert not tenancy.may_see_secrets(VAL, "alice")
    assert not tenancy.may_see_secrets(ALICE, None)  # made with auth off: nobody's
    assert tenancy.may_see_secrets(ROOT, "bob") and tenancy.may_see_secrets(None, "bob")
    spec = pb.JobSpec(env={"API_KEY": "s3cret", "MODE": "fast"})
    tenancy.redact_env(spec)
    assert dict(spec.env) == {"API_KEY": "<redacted>", "MODE": "<redacted>"}
