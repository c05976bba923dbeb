"""Short-lived JWTs for SSE and WebSocket connections (browsers can't send headers there).

Each token is scoped to one purpose, so a token minted for the chat socket can't open
anything else. Signed HS256 with a key derived from SECRET_KEY (joserfc, the AuthLib
project's JOSE library; `authlib.jose` is deprecated in its favour).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry

from mlxmanager.errors import DomainError

DEFAULT_TTL_SECONDS = 300
STREAM_PURPOSE = "sse"  # the dashboard's event streams (mlxmanager.permissions.admin_stream)
PURPOSES = frozenset({"ws-chat", STREAM_PURPOSE})


class InvalidToken(DomainError):
    status = 401
    code = "invalid_token"


def _key() -> OctKey:
    derived = hmac.new(settings.SECRET_KEY.encode(), b"mlxmanager.stream-token.v1", hashlib.sha256)
    return OctKey.import_key(derived.digest())


def token_mint(
    *, user_id: int, purpose: str, ttl: int = DEFAULT_TTL_SECONDS, now: float | None = None
) -> str:
    if purpose not in PURPOSES:
        raise DomainError(f"unknown token purpose '{purpose}'", param="purpose")
    issued = int(now if now is not None else time.time())
    claims = {"sub": str(user_id), "purpose": purpose, "iat": issued, "exp": issued + ttl}
    return jwt.encode({"alg": "HS256"}, claims, _key())


def token_verify(token: str, *, purpose: str, now: float | None = None) -> int:
    """The user id the token was minted for; raises InvalidToken."""
    if not token or len(token) > 2048:
        raise InvalidToken("missing token")
    try:
        claims = jwt.decode(token, _key(), algorithms=["HS256"]).claims
        JWTClaimsRegistry(
            now=int(now) if now is not None else None,
            leeway=5,
            exp={"essential": True},
            sub={"essential": True},
            purpose={"essential": True, "value": purpose},
        ).validate(claims)
        return int(claims["sub"])
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken("invalid or expired token") from exc


async def token_user(token: str, *, purpose: str) -> Any | None:
    """The active user a valid token was minted for, or None (bad, expired, other purpose)."""
    try:
        user_id = await sync_to_async(token_verify)(token, purpose=purpose)
    except InvalidToken:
        return None
    return await get_user_model().objects.filter(pk=user_id, is_active=True).afirst()
