"""API tokens and ownership: two tables on the coordinator's MetaData (migration 0002).

    tokens   id PK (the token's public key id: its 12 characters after "gft_"), name, role
             (admin|user|viewer), salt, hash = sha256(salt || token) hex, created_at, expires_at,
             revoked_at. The plaintext token is never stored: it is shown once, at creation.
    owners   (entity, entity_id) PK, owner, created_at: who created a model or a plain job (the
             token's name), so that role `user` may change only its own. Jobs of a model belong to
             the model's owner; requeued attempts to their first attempt's owner.

Kept apart from schema.py so that security can evolve on its own; the tables live on the same
MetaData, so `compare_metadata` and create/drop see them once this module is imported
(coordinator.db imports it).

Plain functions over a Connection, like coordinator.db.repo: the caller owns the transaction.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from gpufleet.coordinator.db.schema import ID_LEN, UtcDateTime, jobs, metadata, models
from sqlalchemy import Connection

TOKEN_ROLES = ("admin", "user", "viewer")
OWNED_ENTITIES = ("model", "job")
NAME_LEN = 128
KEY_ID_LEN = 16

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(KEY_ID_LEN), primary_key=True),
    sa.Column("name", sa.String(NAME_LEN), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.CheckConstraint("role IN ('admin', 'user', 'viewer')", name="role"),
    sa.Index("ix_tokens_name", "name"),
)

owners = sa.Table(
    "owners",
    metadata,
    sa.Column("entity", sa.String(8), primary_key=True),
    sa.Column("entity_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("owner", sa.String(NAME_LEN), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("entity IN ('model', 'job')", name="entity"),
    sa.Index("ix_owners_owner", "owner"),
)


class TokenRow(NamedTuple):
    id: str
    name: str
    role: str
    salt: str
    hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def insert_token(conn: Connection, row: TokenRow) -> None:
    conn.execute(tokens.insert().values(**row._asdict()))


def get_token(conn: Connection, key_id: str) -> TokenRow | None:
    r = conn.execute(sa.select(*tokens.c).where(tokens.c.id == key_id)).first()
    return TokenRow(*r) if r else None


def list_tokens(conn: Connection, include_revoked: bool = False) -> list[TokenRow]:
    q = sa.select(*tokens.c).order_by(tokens.c.created_at, tokens.c.id)
    if not include_revoked:
        q = q.where(tokens.c.revoked_at.is_(None))
    return [TokenRow(*r) for r in conn.execute(q)]


def revoke(conn: Connection, ident: str, now: datetime) -> list[str]:
    """Revoke the token with key id `ident`, or every live token named `ident`; the key ids revoked."""
    live = tokens.c.revoked_at.is_(None)
    ids = [r.id for r in conn.execute(sa.select(tokens.c.id).where(live, tokens.c.id == ident))]
    if not ids:
        ids = [r.id for r in conn.execute(sa.select(tokens.c.id).where(live, tokens.c.name == ident))]
    if ids:
        conn.execute(tokens.update().where(tokens.c.id.in_(ids)).values(revoked_at=now))
    return ids


def set_owner(conn: Connection, entity: str, entity_id: str, owner: str, now: datetime) -> None:
    """Record who created an entity (first writer wins: ownership never moves)."""
    if entity not in OWNED_ENTITIES:
        raise ValueError(f"entity must be one of {OWNED_ENTITIES}, got {entity!r}")
    exists = conn.execute(sa.select(owners.c.owner).where(owners.c.entity == entity,
                                                          owners.c.entity_id == entity_id)).first()
    if exists is None:
        conn.execute(owners.insert().values(entity=entity, entity_id=entity_id, owner=owner, created_at=now))


def get_owner(conn: Connection, entity: str, entity_id: str) -> str | None:
    return conn.execute(sa.select(owners.c.owner).where(owners.c.entity == entity,
                                                        owners.c.entity_id == entity_id)).scalar()


class Ownership(NamedTuple):
    exists: bool  # the model or job exists at all
    owner: str | None  # None: created before tokens were on, or by nobody we know
    what: str  # "model <uuid>" / "job <id>", for messages


def model_ownership(conn: Connection, uuid: str) -> Ownership:
    exists = conn.execute(sa.select(models.c.uuid).where(models.c.uuid == uuid)).first() is not None
    return Ownership(exists, get_owner(conn, "model", uuid) if exists else None, f"model {uuid}")


def job_ownership(conn: Connection, job_id: str) -> Ownership:
    """A job belongs to its model's owner, else to whoever submitted its first attempt."""
    r = conn.execute(sa.select(jobs.c.model_uuid, jobs.c.root_id).where(jobs.c.id == job_id)).first()
    if r is None:
        return Ownership(False, None, f"job {job_id}")
    if r.model_uuid:
        return Ownership(True, get_owner(conn, "model", r.model_uuid), f"job {job_id} (model {r.model_uuid})")
    return Ownership(True, get_owner(conn, "job", r.root_id), f"job {job_id}")


def owners_of(conn: Connection, entity: str, ids: Iterable[str]) -> dict[str, str]:
    """entity id -> owner, for those of `ids` that have one (one query)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    q = sa.select(owners.c.entity_id, owners.c.owner).where(owners.c.entity == entity,
                                                            owners.c.entity_id.in_(wanted))
    return {r.entity_id: r.owner for r in conn.execute(q)}


def job_owners(conn: Connection, jobs_: Iterable[tuple[str, str | None, str]]) -> dict[str, str | None]:
    """job id -> owner for (job id, model uuid, root id) triples, by job_ownership's rule."""
    rows = list(jobs_)
    by_model = owners_of(conn, "model", [m for _, m, _ in rows if m])
    by_root = owners_of(conn, "job", [r for _, m, r in rows if not m])
    return {j: (by_model.get(m) if m else by_root.get(r)) for j, m, r in rows}
