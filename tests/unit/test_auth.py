"""API tokens (gpufleet.auth + coordinator.db.tokens): create, verify, revoke, stored hashed, cached."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from gpufleet.coordinator import tokens as ctok
from gpufleet.coordinator.db import tokens as db
from gpufleet.coordinator.db.engine import make_engine, migrate
from gpufleet.coordinator.db.schema import metadata
from sqlalchemy import Engine

from gpufleet import auth
from gpufleet.errors import InvalidArgument, NotFound
from gpufleet.v1 import coordinator_pb2 as cpb


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'coordinator.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def all_cells(engine: Engine) -> str:
    """Every value of every row of the tokens table, as one string."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.tokens)).all()
    return " ".join(str(v) for r in rows for v in r)


def test_tables_agree_with_migration_0002(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        status = migrate(eng)
        assert status.up_to_date and status.current is not None and status.current >= "0002"
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        mine = [d for d in diff if "tokens" in repr(d) or "owners" in repr(d)]
        assert mine == [], "coordinator/db/tokens.py and migration 0002 disagree"
        assert {"tokens", "owners"} <= set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_token_format_and_only_a_salted_hash_is_stored(engine: Engine) -> None:
    token = ctok.create_token(engine, "alice", "user")
    assert token.startswith("gft_") and len(token) == 4 + 43
    assert set(token[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    cells = all_cells(engine)
    assert token not in cells and token[4:] not in cells and token[16:] not in cells
    with engine.connect() as conn:
        row = db.get_token(conn, token[4:16])
    assert row is not None and (row.name, row.role) == ("alice", "user")
    assert row.hash == hashlib.sha256(bytes.fromhex(row.salt) + token.encode()).hexdigest()
    assert len(row.salt) == 32
    # Same name, new token: a different salt, a different hash.
    other = ctok.create_token(engine, "alice", "user")
    with engine.connect() as conn:
        row2 = db.get_token(conn, other[4:16])
    assert row2 is not None and row2.salt != row.salt and row2.hash != row.hash


def test_verify_accepts_the_token_and_nothing_near_it(engine: Engine) -> None:
    token = ctok.create_token(engine, "alice", "viewer")
    info = ctok.verify_token(engine, token)
    assert (info.name, info.role, info.id) == ("alice", "viewer", token[4:16])
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    near = (flipped, token[:-1], token + "x", "gft_" + "A" * 43, token.replace("gft_", "gfx_"), "", "Bearer")
    for bad in near:
        with pytest.raises(ctok.TokenRejected, match="unknown or revoked token"):
            ctok.verify_token(engine, bad)


def test_revoke_by_id_by_display_form_and_by_name(engine: Engine) -> None:
    a1 = ctok.create_token(engine, "alice", "user")
    a2 = ctok.create_token(engine, "alice", "user")
    b = ctok.create_token(engine, "bob", "admin")
    v = ctok.create_token(engine, "val", "viewer")
    assert ctok.revoke_token(engine, a1[4:16]) == [a1[4:16]]
    with pytest.raises(ctok.TokenRejected, match="unknown or revoked token"):
        ctok.verify_token(engine, a1)
    assert ctok.verify_token(engine, a2).name == "alice"  # only that one
    assert ctok.revoke_token(engine, "alice") == [a2[4:16]]
    with pytest.raises(ctok.TokenRejected):
        ctok.verify_token(engine, a2)
    shown = next(t for t in ctok.list_tokens(engine) if t.name == "val").display
    assert shown == f"gft_{v[4:16]}…"
    ctok.revoke_token(engine, shown)  # what `tokens list` prints is accepted back
    with pytest.raises(NotFound, match="no live token"):
        ctok.revoke_token(engine, "alice")  # nothing live left under that name
    with pytest.raises(NotFound):
        ctok.revoke_token(engine, "nobody")
    live = ctok.list_tokens(engine)
    assert [(t.name, t.role) for t in live] == [("bob", "admin")]
    assert ctok.verify_token(engine, b).role == "admin"
    everything = ctok.list_tokens(engine, include_revoked=True)
    assert len(everything) == 4 and sum(t.revoked_at is not None for t in everything) == 3
    assert set(everything[0].as_dict()) == {"id", "name", "role", "created_at", "expires_at", "revoked_at"}


def test_expired_tokens_are_refused(engine: Engine) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    token = ctok.create_token(engine, "ci", "user", expires_in=timedelta(hours=1), now=t0)
    assert ctok.verify_token(engine, token, now=t0 + timedelta(minutes=59)).name == "ci"
    with pytest.raises(ctok.TokenRejected, match="expired token"):
        ctok.verify_token(engine, token, now=t0 + timedelta(hours=1))


@pytest.mark.parametrize(("name", "role", "field"), [
    ("alice", "root", "role"), ("", "user", "name"), ("has space", "user", "name"),
    ("x" * 129, "user", "name"),
])
def test_create_refuses_bad_names_and_roles(engine: Engine, name: str, role: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        ctok.create_token(engine, name, role)
    assert exc.value.field == field
    assert ctok.list_tokens(engine, include_revoked=True) == []


def test_tokens_never_reach_the_log(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = ctok.create_token(engine, "alice", "admin")
    ctok.verify_token(engine, token)
    ctok.TokenVerifier(engine).verify(token)
    ctok.revoke_token(engine, token)
    with pytest.raises(ctok.TokenRejected):
        ctok.verify_token(engine, token)
    text = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    assert token[4:16] in text  # the key id is logged, so an operator can tell tokens apart ...
    assert token not in text and token[16:] not in text  # ... never the secret


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_verifier_caches_successes_for_ttl(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    token = ctok.create_token(engine, "alice", "user")
    calls: list[str] = []
    real = ctok.verify_token

    def counting(eng: Engine, tok: str, now: datetime | None = None) -> ctok.TokenInfo:
        calls.append(tok[4:16])
        return real(eng, tok, now)

    monkeypatch.setattr(ctok, "verify_token", counting)
    clock = Clock()
    v = ctok.TokenVerifier(engine, ttl=5.0, clock=clock)
    try:
        for _ in range(100):
            assert v.verify(token).name == "alice"
        assert len(calls) == 1
        # Revoked by another process (the CLI writes to the database): honoured once the entry expires.
        with engine.begin() as conn:
            conn.execute(db.tokens.update().values(revoked_at=datetime.now(UTC)))
        clock.t += 4.9
        assert v.verify(token).name == "alice"
        clock.t += 0.2
        with pytest.raises(ctok.TokenRejected):
            v.verify(token)
        # Failures are not cached: every try asks the database.
        with pytest.raises(ctok.TokenRejected):
            v.verify(token)
        assert len(calls) == 3
    finally:
        v.close()


def test_revoke_in_process_clears_every_verifier_at_once(engine: Engine) -> None:
    token = ctok.create_token(engine, "alice", "user")
    v = ctok.TokenVerifier(engine, ttl=3600)
    try:
        assert v.verify(token).name == "alice"
        ctok.revoke_token(engine, "alice")
        with pytest.raises(ctok.TokenRejected, match="unknown or revoked"):
            v.verify(token)
    finally:
        v.close()


def test_bearer_token_parsing() -> None:
    assert auth.bearer_token([("authorization", "Bearer gft_x")]) == "gft_x"
    assert auth.bearer_token([("x-other", "1"), ("authorization", "bearer   gft_y ")]) == "gft_y"
    assert auth.bearer_token([("authorization", b"Bearer gft_z")]) == "gft_z"
    assert auth.bearer_token([("authorization", "Basic dXNlcjpwYXNz")]) == ""
    assert auth.bearer_token([("authorization", "Bearer")]) == ""
    assert auth.bearer_token([("x-other", "1")]) is None
    assert auth.bearer_token(None) is None


def test_load_token_from_env_or_file_never_a_flag(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("gft_fromfile\n")
    assert auth.load_token(str(f), env={"GPUFLEET_TOKEN": "gft_env"}) == "gft_fromfile"  # the flag wins
    assert auth.load_token("", env={"GPUFLEET_TOKEN": " gft_env\n"}) == "gft_env"
    assert auth.load_token("", env={"GPUFLEET_TOKEN_FILE": str(f)}) == "gft_fromfile"
    assert auth.load_token("", env={}) is None
    with pytest.raises(InvalidArgument, match="--token-file.*cannot read"):
        auth.load_token(str(tmp_path / "missing"), env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidArgument, match="empty"):
        auth.load_token(str(tmp_path / "empty"), env={})


def test_every_coordinator_method_has_a_policy() -> None:
    methods = {m.name for m in cpb.DESCRIPTOR.services_by_name["Coordinator"].methods}
    reads = {m for m in methods if auth.is_read_method(m)}
    assert reads == {"GetModel", "ListModels", "GetJob", "ListJobs", "StreamJobLogs", "GetJobMetrics",
                     "ListNodes", "DatasetCounts", "GetArray", "GetPipeline", "GetUsage", "ListQuotas",
                     "DownloadOutput"}
    user_changes = set(auth.CREATE_METHODS) | auth.MODEL_METHODS | auth.JOB_METHODS | set(auth.GROUP_METHODS)
    assert user_changes <= methods
    # Arrays and pipelines are the user's own: every member job's owner is recorded with it.
    assert {"SubmitArray", "CancelArray", "SubmitPipeline", "CancelPipeline"} <= user_changes
    assert methods - reads - user_changes == {"DrainNode", "UndrainNode", "SetQuota", *auth.ADMIN_METHODS}
    assert auth.ADMIN_METHODS == {"CreateToken", "ListTokens", "RevokeToken"}  # ListTokens is no viewer read
    fleet = {m.name for m in cpb.DESCRIPTOR.services_by_name["Fleet"].methods}
    for name in fleet:  # the Fleet check relies on every request naming its node
        req = cpb.DESCRIPTOR.services_by_name["Fleet"].methods_by_name[name].input_type
        assert "node_name" in req.fields_by_name, name


def test_owners_first_writer_wins_and_jobs_follow_their_model(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        db.set_owner(conn, "model", "m1", "alice", now)
        db.set_owner(conn, "model", "m1", "mallory", now)
        assert db.get_owner(conn, "model", "m1") == "alice"
        assert db.get_owner(conn, "job", "m1") is None
        with pytest.raises(ValueError):
            db.set_owner(conn, "node", "n1", "alice", now)
        assert db.model_ownership(conn, "00000000-0000-0000-0000-000000000000") == (
            False, None, "model 00000000-0000-0000-0000-000000000000")
        assert db.job_ownership(conn, "nojob").exists is False
