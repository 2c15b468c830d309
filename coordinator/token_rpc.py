"""Token management over the Coordinator API: CreateToken, ListTokens, RevokeToken (admin only).

CoordinatorAuth (coordinator/tokens.py) lets only admin tokens reach these methods; with auth off
(loopback development) everyone is admin. A mixin of CoordinatorService: decode, one call into
coordinator.tokens, encode.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from gpufleet.coordinator import tokens
from gpufleet.coordinator.convert import ts
from sqlalchemy.engine import Engine

from gpufleet.errors import InvalidArgument, rpc
from gpufleet.v1 import coordinator_pb2 as cpb

MAX_EXPIRES_IN = timedelta(days=3650)


def token_to_pb(info: tokens.TokenInfo) -> cpb.TokenInfo:
    return cpb.TokenInfo(id=info.id, name=info.name, role=info.role, created_at=ts(info.created_at),
                         expires_at=ts(info.expires_at), revoked_at=ts(info.revoked_at))


def expires_in(seconds: int) -> timedelta | None:
    if seconds < 0 or seconds > MAX_EXPIRES_IN.total_seconds():
        limit = int(MAX_EXPIRES_IN.total_seconds())
        raise InvalidArgument("expires_in_seconds", f"must be between 0 (never) and {limit}, got {seconds}")
    return timedelta(seconds=seconds) if seconds else None


class TokenAdmin:
    """The token RPCs of gpufleet.v1.Coordinator."""

    engine: Engine

    @rpc
    def CreateToken(self, request: cpb.CreateTokenRequest, context: Any) -> cpb.CreateTokenResponse:
        token = tokens.create_token(self.engine, request.name, request.role, expires_in(request.expires_in_seconds))
        info = tokens.get_token_info(self.engine, token)
        return cpb.CreateTokenResponse(token=token, info=token_to_pb(info))

    @rpc
    def ListTokens(self, request: cpb.ListTokensRequest, context: Any) -> cpb.ListTokensResponse:
        items = tokens.list_tokens(self.engine, include_revoked=request.include_revoked)
        return cpb.ListTokensResponse(items=[token_to_pb(t) for t in items])

    @rpc
    def RevokeToken(self, request: cpb.RevokeTokenRequest, context: Any) -> cpb.RevokeTokenResponse:
        if not request.ident.strip():
            raise InvalidArgument("ident", "must name a token id or a token name")
        return cpb.RevokeTokenResponse(ids=tokens.revoke_token(self.engine, request.ident))
