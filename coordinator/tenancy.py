"""Tenants apart: where a user's jobs may write and read, and what others may see of them.

Applies to role `user` (admins, and every caller with auth off, are unchanged):

    output   every job's output folder lies under users/<owner>/ of the output root. A path outside
             users/ is placed there ("jobs/j" -> "users/alice/jobs/j"); "users/alice/..." is kept;
             "users/bob/..." is PERMISSION_DENIED. A model's attempts inherit its prefix.
    reads    mount sources and staging links (paths under the data root) may name shared data, but
             not another user's users/<name>/ folder and not tmp/ (where staged datasets live: a
             job gets its own through spec.dataset).
    dataset  spec.dataset (a staged dataset's id: a model uuid) must name a model the caller owns.
    secrets  spec.env values are shown to the job's (or model's) owner and admins only; anyone else
             reading it (viewers, other users) gets the keys with REDACTED values.

Logs and metrics are the interceptor's (coordinator/tokens.py: owner, admins, viewers with
--viewers-read-logs). Pure functions: the caller passes who is asking and who owns what.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from gpufleet.auth import Principal
from gpufleet.errors import PermissionDenied

USERS_DIR = "users"
STAGE_DIR = "tmp"  # <data-root>/tmp/<stage id>: staged datasets (agent/staging.py)
REDACTED = "<redacted>"


def scoped(who: Principal | None) -> bool:
    """Whether the tenant rules apply to this caller."""
    return who is not None and who.role != "admin"


def home(owner: str) -> str:
    """A user's own folder, relative to the output and data roots."""
    if not owner or owner.startswith(".") or "/" in owner:
        # Token names are checked at creation (coordinator/tokens.py); never trust one as a path.
        raise PermissionDenied("token", f"the name {owner!r} cannot own files")
    return f"{USERS_DIR}/{owner}"


def _parts(rel: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(rel).parts if p != ".")


def own_output(rel: str, field: str, who: Principal) -> str:
    """`rel` placed under the caller's own folder; refused when it names another user's."""
    parts = _parts(rel)
    mine = home(who.name)
    if parts[:1] == (USERS_DIR,):
        if parts[1:2] != (who.name,):
            raise PermissionDenied(field, f"{rel!r} is not under your own folder {mine}/ (token {who.name!r} "
                                          f"has role user: outputs live under {USERS_DIR}/<your name>/)")
        return rel
    return f"{mine}/{rel}" if rel else rel


def check_readable(rel: str, field: str, who: Principal) -> None:
    """A data-root path a user may read: shared data or its own folder, not another user's or tmp/."""
    parts = _parts(rel)
    if parts[:1] == (USERS_DIR,) and parts[1:2] != (who.name,):
        raise PermissionDenied(field, f"{rel!r} is another user's folder (token {who.name!r} has role user: "
                                      f"only {home(who.name)}/ and shared data outside {USERS_DIR}/)")
    if parts[:1] == (STAGE_DIR,):
        raise PermissionDenied(field, f"{rel!r} lies under {STAGE_DIR}/, where staged datasets live; name "
                                      "your own model's staged dataset with spec.dataset")


def scope_spec(spec: dict[str, Any], who: Principal | None, owns_model: Callable[[str], bool],
               default_output: str = "") -> dict[str, Any]:
    """The stored spec dict of a new job or model, with the tenant rules applied (a new dict)."""
    if not scoped(who):
        return spec
    assert who is not None
    out = dict(spec)
    output = out.get("output_dir") or default_output
    out["output_dir"] = own_output(output, "spec.output_dir", who)
    for i, m in enumerate(out.get("mounts") or []):
        check_readable(str(m.get("source", "")), f"spec.mounts[{i}].source", who)
    dataset = out.get("dataset") or ""
    if dataset and not owns_model(dataset):
        raise PermissionDenied("spec.dataset", f"{dataset!r} is not a model owned by {who.name!r}: a job may "
                                               "use only its owner's staged datasets")
    return out


def may_see_secrets(who: Principal | None, owner: str | None) -> bool:
    return not scoped(who) or (who is not None and owner == who.name)


def redact_env(spec: Any) -> None:
    """Blank every env value of a gpufleet.v1.JobSpec in place (the keys stay: they are not secret)."""
    for key in list(spec.env):
        spec.env[key] = REDACTED
