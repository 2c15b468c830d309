"""Token storage and checking, and the Coordinator's interceptor (tokens, roles, ownership).

The coordinator owns its tokens: gpufleet.auth keeps only what both daemons and the CLI share
(the agent's interceptor, bearer metadata, roles, the client side). Admins manage tokens over the
Coordinator API (CreateToken/ListTokens/RevokeToken, coordinator/token_rpc.py); the first admin
token is minted on the coordinator host with `gpufleet-coordinator tokens create`.
See gpufleet/auth.py for who may call what.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from gpufleet.coordinator import priority
from gpufleet.coordinator.db import options
from gpufleet.coordinator.db import tokens as db
from sqlalchemy import Engine

from gpufleet.auth import (
    COORDINATOR_SERVICE,
    CREATE_METHODS,
    DEFAULT_TTL,
    FLEET_SERVICE,
    GROUP_METHODS,
    JOB_METHODS,
    KEY_ID_CHARS,
    MODEL_METHODS,
    OWNER_READ_METHODS,
    TOKEN_BYTES,
    TOKEN_PREFIX,
    TOKEN_ROLES,
    Check,
    Principal,
    _deny,
    _split,
    _wrap,
    bearer_token,
    is_read_method,
    set_caller,
)
from gpufleet.errors import InvalidArgument, NotFound
from gpufleet.log import event
from gpufleet.tls import names_address, peer_identity, peer_names

log = logging.getLogger("gpufleet.auth")
_TOKEN_LEN = len(TOKEN_PREFIX) + len(secrets.token_urlsafe(TOKEN_BYTES))
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")

# Tokens


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    id: str  # public key id (first 12 characters after gft_)
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def display(self) -> str:
        return f"{TOKEN_PREFIX}{self.id}…"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def _hash(salt_hex: str, token: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + token.encode()).hexdigest()


def _key_id(token: str) -> str | None:
    """The key id of a well-formed token, else None (no database lookup for garbage)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) != _TOKEN_LEN:
        return None
    body = token[len(TOKEN_PREFIX):]
    if not all(c.isalnum() or c in "-_" for c in body):
        return None
    return body[:KEY_ID_CHARS]


def _info(row: Any) -> TokenInfo:
    return TokenInfo(id=row.id, name=row.name, role=row.role, created_at=row.created_at,
                     expires_at=row.expires_at, revoked_at=row.revoked_at)


def check_token_name(name: str) -> None:
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS or name.startswith("."):
        # The name is also the owner's folder (users/<name>/): never ".", ".." or hidden.
        raise InvalidArgument("name", "must be 1-128 characters of letters, digits, '.', '_', '@', '-', "
                                      f"not starting with '.', got {name!r}")


def create_token(engine: Engine, name: str, role: str, expires_in: timedelta | None = None,
                 now: datetime | None = None) -> str:
    """Store a new token for `name` with `role`; returns the plaintext, which is never stored:
    show it once. Several live tokens may share a name (rotation): they act as the same owner."""
    check_token_name(name)
    if role not in TOKEN_ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(TOKEN_ROLES)}, got {role!r}")
    if expires_in is not None and expires_in.total_seconds() <= 0:
        raise InvalidArgument("expires_in", "must be positive")
    now = now or datetime.now(UTC)
    for _ in range(5):
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        key_id = _key_id(token)
        if key_id is None:
            continue
        salt = secrets.token_hex(16)
        with engine.begin() as conn:
            if db.get_token(conn, key_id) is not None:
                continue  # 72-bit collision: never in practice, but never a silent overwrite
            expires_at = now + expires_in if expires_in else None
            db.insert_token(conn, db.TokenRow(id=key_id, name=name, role=role, salt=salt,
                                              hash=_hash(salt, token), created_at=now,
                                              expires_at=expires_at, revoked_at=None))
        event(log, "token.created", token_id=key_id, token_name=name, role=role)
        return token
    raise RuntimeError("could not draw a unique token id")


def list_tokens(engine: Engine, include_revoked: bool = False) -> list[TokenInfo]:
    with engine.connect() as conn:
        return [_info(r) for r in db.list_tokens(conn, include_revoked)]


def revoke_token(engine: Engine, ident: str, now: datetime | None = None) -> list[str]:
    """Revoke the token with key id `ident` (also accepted: the full token, or `gft_<id>…`), or every
    live token named `ident`. Returns the key ids revoked; NotFound when nothing matched."""
    ident = ident.strip().rstrip("…").removesuffix("...")
    if ident.startswith(TOKEN_PREFIX):
        ident = ident[len(TOKEN_PREFIX):][:KEY_ID_CHARS]
    with engine.begin() as conn:
        ids = db.revoke(conn, ident, now or datetime.now(UTC))
    if not ids:
        raise NotFound(f"no live token has id or name {ident!r} (see `gpufleet tokens list`)")
    _forget_everywhere(ids)
    event(log, "token.revoked", token_ids=",".join(ids))
    return ids


def get_token_info(engine: Engine, token: str) -> TokenInfo:
    """The stored record of a token just created (by its key id), revoked or not."""
    key_id = _key_id(token)
    with engine.connect() as conn:
        row = db.get_token(conn, key_id or "")
    if row is None:
        raise NotFound(f"no token has id {key_id!r}")
    return _info(row)


class TokenRejected(Exception):
    """Why a presented token does not authenticate (message safe to return to the caller)."""


def verify_token(engine: Engine, token: str, now: datetime | None = None) -> TokenInfo:
    """The live token `token` is, or TokenRejected. Constant-time comparison of the hash."""
    key_id = _key_id(token)
    if key_id is None:
        raise TokenRejected("unknown or revoked token (not a gpufleet token: expected gft_ and 43 "
                            "characters)")
    with engine.connect() as conn:
        row = db.get_token(conn, key_id)
    if row is None or not hmac.compare_digest(row.hash, _hash(row.salt, token)):
        raise TokenRejected("unknown or revoked token")
    if row.revoked_at is not None:
        raise TokenRejected("unknown or revoked token")
    if row.expires_at is not None and row.expires_at <= (now or datetime.now(UTC)):
        raise TokenRejected(f"expired token (id {key_id}, expired {row.expires_at.isoformat()})")
    return _info(row)


_VERIFIERS: list[TokenVerifier] = []
_VERIFIERS_LOCK = threading.Lock()


def _forget_everywhere(ids: Iterable[str]) -> None:
    with _VERIFIERS_LOCK:
        verifiers = list(_VERIFIERS)
    for v in verifiers:
        v.forget(ids)


class TokenVerifier:
    """verify_token with an in-memory cache of successes for `ttl` seconds (failures are not cached).

    Revocations through revoke_token in this process apply at once; from another process (the CLI
    writes to the database directly) within `ttl`.
    """

    def __init__(self, engine: Engine, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:
        self.engine = engine
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._cache: dict[bytes, tuple[float, TokenInfo]] = {}
        self._lock = threading.Lock()
        with _VERIFIERS_LOCK:
            _VERIFIERS.append(self)

    def verify(self, token: str) -> TokenInfo:
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            info = hit[1]
            if info.expires_at is None or info.expires_at > datetime.now(UTC):
                return info
        info = verify_token(self.engine, token)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl, info)
        return info

    def forget(self, ids: Iterable[str] | None = None) -> None:
        with self._lock:
            if ids is None:
                self._cache.clear()
                return
            drop = set(ids)
            for k in [k for k, (_, info) in self._cache.items() if info.id in drop]:
                del self._cache[k]

    def close(self) -> None:
        with _VERIFIERS_LOCK:
            if self in _VERIFIERS:
                _VERIFIERS.remove(self)



class CoordinatorAuth(grpc.ServerInterceptor):
    """Tokens and roles for gpufleet.v1.Coordinator; agent certificates for gpufleet.v1.Fleet.

    `agent_certs=False` (tokens without TLS, e.g. a loopback coordinator): every Fleet call is
    refused, since without a certificate anyone could speak for any node (and be sent its jobs'
    secrets). `viewers_read_logs`: viewers may read every job's logs and metrics (off by default).
    """

    def __init__(self, engine: Engine, *, agent_certs: bool = True, ttl: float = DEFAULT_TTL,
                 verifier: TokenVerifier | None = None, viewers_read_logs: bool = False,
                 user_max_priority: int = priority.DEFAULT_USER_MAX_PRIORITY) -> None:
        self.engine = engine
        self.user_max_priority = user_max_priority
        self.agent_certs = agent_certs
        self.viewers_read_logs = viewers_read_logs
        self.verifier = verifier or TokenVerifier(engine, ttl=ttl)
        if not agent_certs:
            event(log, "auth.fleet_refused", logging.WARNING,
                  detail="auth on without mTLS: gpufleet.v1.Fleet calls are refused, so no agent can register; "
                         "give --tls-cert/--tls-key/--tls-ca")

    def close(self) -> None:
        self.verifier.close()

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        service, method = _split(handler_call_details.method)
        if handler is None:
            return None
        if service == FLEET_SERVICE:
            return _wrap(handler, self._fleet_check(method))
        if service == COORDINATOR_SERVICE:
            return _wrap(handler, self._coordinator_check(method))
        return handler

    # -- Fleet ----------------------------------------------------------------------------------------
    def _fleet_check(self, method: str) -> Check:
        full = f"{FLEET_SERVICE}/{method}"

        def check(request: Any, context: grpc.ServicerContext) -> None:
            if not self.agent_certs:
                _deny(context, grpc.StatusCode.UNAUTHENTICATED,
                      f"{full} needs mTLS when the coordinator's auth is on: start it with --tls-cert/--tls-key/"
                      "--tls-ca and give the agent its certificate (`gpufleet certs issue NODE --role agent`)",
                      method=full)
                return
            ident = peer_identity(context)
            if ident is None:
                _deny(context, grpc.StatusCode.UNAUTHENTICATED,
                      f"{full} needs an agent certificate signed by the fleet CA", method=full)
                return
            if ident.role != "agent":
                _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                      f"certificate {ident.name!r} has role {ident.role}; {full} accepts only role agent",
                      method=full, peer=ident.name, role=ident.role)
                return
            node = getattr(request, "node_name", None)
            if node != ident.name:
                _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                      f"agent certificate {ident.name!r} may only speak for node {ident.name!r}, "
                      f"not {node!r} ({full})", method=full, peer=ident.name, node=node)
                return
            address = getattr(request, "address", None)
            if address is not None:  # Register: the coordinator will dial it with the node's jobs
                _check_address(context, full, ident.name, str(address))

        return check

    # -- Coordinator ----------------------------------------------------------------------------------
    def authenticate(self, context: grpc.ServicerContext, full: str) -> Principal:
        token = bearer_token(context.invocation_metadata())
        if token is None:
            _deny(context, grpc.StatusCode.UNAUTHENTICATED,
                  f"missing bearer token: {full} needs metadata `authorization: Bearer <token>` "
                  "(gpufleet CLI: set GPUFLEET_TOKEN or --token-file; an admin makes one with "
                  "`gpufleet tokens create`)", method=full)
        if not token:
            _deny(context, grpc.StatusCode.UNAUTHENTICATED,
                  "malformed authorization metadata: expected `Bearer <token>`", method=full)
        info: TokenInfo | None = None
        rejected = ""
        try:
            info = self.verifier.verify(token or "")
        except TokenRejected as exc:
            rejected = str(exc)
        except Exception:  # noqa: BLE001 - never str(exc) to the caller: it may name the database
            log.exception("token check failed", extra={"fields": {"method": full}})
        if rejected:
            _deny(context, grpc.StatusCode.UNAUTHENTICATED, rejected, method=full,
                  token_id=_key_id(token or "") or "-")
        if info is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{full}: cannot check the token now (the coordinator's database is unavailable); "
                          "try again")
            raise AssertionError("unreachable")  # context.abort raised
        return Principal(name=info.name, role=info.role, via="token", token_id=info.id)

    def _coordinator_check(self, method: str) -> Check:
        full = f"{COORDINATOR_SERVICE}/{method}"

        def check(request: Any, context: grpc.ServicerContext) -> Callable[[Any], None] | None:
            who = self.authenticate(context, full)
            set_caller(who)  # the servicer owns, scopes and redacts by it (coordinator/tenancy.py)
            fields = {"method": full, "token_id": who.token_id, "principal": who.name, "role": who.role}
            if who.role == "admin":
                return self._recorder(method, who)
            if method in OWNER_READ_METHODS:
                if who.role == "viewer" and self.viewers_read_logs:
                    return None
                if who.role == "user":
                    self._check_owner(context, method, request, who, fields,
                                      verb="read the logs, metrics and outputs of")
                    return None
                _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                      f"token {who.name!r} has role {who.role}, which may not call {full}: a job's logs, "
                      "metrics and outputs are its owner's and admins' (an admin may let viewers read them with the "
                      "coordinator's --viewers-read-logs)", **fields)
            if is_read_method(method):
                return None  # viewers and users read the rest; secrets are redacted by the servicer
            if who.role == "viewer":
                _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                      f"token {who.name!r} has role viewer, which may not call {full} "
                      "(viewers may only call Get*, List*, Stream* and DatasetCounts)", **fields)
            if who.role != "user":
                _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                      f"token {who.name!r} has unknown role {who.role!r}", **fields)
            if method in CREATE_METHODS:
                too_high = priority.over_cap(method, request, who.role, self.user_max_priority)
                if too_high:
                    _deny(context, grpc.StatusCode.INVALID_ARGUMENT, too_high, **fields)
                return self._recorder(method, who)
            if method in MODEL_METHODS or method in JOB_METHODS or method in GROUP_METHODS:
                self._check_owner(context, method, request, who, fields)
                return None
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"token {who.name!r} has role user, which may not call {full} (admin only)", **fields)
            return None

        return check

    def _check_owner(self, context: grpc.ServicerContext, method: str, request: Any, who: Principal,
                     fields: Mapping[str, Any], verb: str = "change") -> None:
        own: db.Ownership | None = None
        try:
            with self.engine.connect() as conn:
                if method in JOB_METHODS or method in OWNER_READ_METHODS:
                    own = db.job_ownership(conn, str(getattr(request, "job_id", "")))
                elif method in GROUP_METHODS:
                    own = group_ownership(conn, method, str(getattr(request, GROUP_METHODS[method], "")))
                else:
                    own = db.model_ownership(conn, str(getattr(request, "uuid", "")))
        except Exception:  # noqa: BLE001
            log.exception("ownership check failed", extra={"fields": {"method": method}})
        if own is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{COORDINATOR_SERVICE}/{method}: cannot check who owns it now (the coordinator's "
                          "database is unavailable)")
            raise AssertionError("unreachable")
        if not own.exists:
            return  # let the servicer answer NOT_FOUND / INVALID_ARGUMENT as it always does
        if own.owner != who.name:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"token {who.name!r} has role user, which may only {verb} its own models and jobs; "
                  f"{own.what} is not owned by {who.name!r} ({COORDINATOR_SERVICE}/{method})", **fields)

    def _recorder(self, method: str, who: Principal) -> Callable[[Any], None] | None:
        entity = CREATE_METHODS.get(method)
        if entity is None:
            return None

        def record(response: Any) -> None:
            # Submits record their jobs' owner in their own transaction (workflows.JobRequest.owner);
            # this is for models, and a no-op repeat for jobs (first writer wins).
            if entity == "model":
                ids = [response.uuid]
            elif method == "SubmitPipeline":
                ids = [s.job_id for s in response.steps]
            elif method == "SubmitArray":
                ids = [j.job_id for j in response.jobs]
            else:
                ids = [response.job_id]
            try:
                with self.engine.begin() as conn:
                    for entity_id in ids:
                        db.set_owner(conn, entity, entity_id, who.name, datetime.now(UTC))
            except Exception:  # noqa: BLE001 - the entity exists; without an owner only admins may change it
                log.exception("owner not recorded", extra={"fields": {"entity": entity, "id": entity_id}})

        return record


def _check_address(context: grpc.ServicerContext, full: str, node: str, address: str) -> None:
    """The address a node registers must be one its certificate names: else a stolen or misissued
    certificate could point the coordinator (and every Launch, env secrets included) anywhere."""
    host = address.rpartition(":")[0].strip("[]") or address
    names = peer_names(context)
    if names is None or not names_address(names, host):
        named = ", ".join((names.dns + names.ips) if names else []) or "none"
        _deny(context, grpc.StatusCode.PERMISSION_DENIED,
              f"address: {address!r} is not named by the certificate of node {node!r} (it names {named}); "
              f"register at an address the certificate names, or reissue it with "
              f"`gpufleet certs issue {node} --role agent --host {host}` ({full})",
              method=full, peer=node, address=address)


def group_ownership(conn: Any, method: str, ident: str) -> db.Ownership:
    """An array or pipeline is owned by X when every job in it is (else by nobody: admins only)."""
    field = GROUP_METHODS[method]
    what = f"{'array' if field == 'array_id' else 'pipeline'} {ident}"
    found = options.jobs_of(conn, **{field: ident}) if ident else []
    owners = {db.job_ownership(conn, j.id).owner for j, _ in found}
    return db.Ownership(bool(found), owners.pop() if len(owners) == 1 else None, what)
