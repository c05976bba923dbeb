"""Short-lived JWTs for SSE and WebSocket connections (browsers can't send headers there).

Each token is scoped to one purpose, so a token minted for the chat socket can't open
anything else. Signed HS256 with a key derived from SECRET_KEY (joserfc, the AuthLib
project's JOSE library; `authlib.jose` is deprecated in its favour).

Tokens die with the login that minted them: each carries the user's stream-token generation
(`gen`), which logging out bumps (`user_logged_out`, mlxmanager/accounts/signals.py), and
`token_verify` refuses a token whose generation is no longer the user's. Logging out on one
device ends the tokens of the user's other sessions too; those mint new ones from their session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import F
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
    claims = {"sub": str(user_id), "purpose": purpose, "iat": issued, "exp": issued + ttl,
              "gen": token_generation(user_id)}  # fmt: skip
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
            gen={"essential": True},
        ).validate(claims)
        user_id, generation = int(claims["sub"]), claims["gen"]
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken("invalid or expired token") from exc
    if generation != token_generation(user_id):
        raise InvalidToken("this token was minted before a logout")
    return user_id


def _read_generation(user_id: int) -> int:
    from mlxmanager.accounts.models import StreamTokenGeneration

    row = StreamTokenGeneration.objects.filter(user_id=user_id).values_list("generation", flat=True).first()
    return int(row or 0)


def _read_generation_in_own_thread(user_id: int) -> int:
    try:
        return _read_generation(user_id)
    finally:
        connections.close_all()  # this thread's, which ends now


def token_generation(user_id: int) -> int:
    """The user's current stream-token generation (0 until the first logout).

    `token_verify` is called on an event loop's thread too (the chat consumer's `connect`
    calls it directly), where Django refuses to run a query: there the one indexed read runs
    in a thread of its own and is waited for (a handshake, not a per-message cost)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _read_generation(user_id)
    with ThreadPoolExecutor(1, thread_name_prefix="token-generation") as pool:
        return pool.submit(_read_generation_in_own_thread, user_id).result()


def tokens_revoke(*, user_id: int) -> None:
    """End every stream token minted for the user so far (at logout)."""
    from mlxmanager.accounts.models import StreamTokenGeneration

    StreamTokenGeneration.objects.get_or_create(user_id=user_id)
    StreamTokenGeneration.objects.filter(user_id=user_id).update(generation=F("generation") + 1)


async def token_user(token: str, *, purpose: str) -> Any | None:
    """The active user a valid token was minted for, or None (bad, expired, other purpose)."""
    try:
        user_id = await sync_to_async(token_verify)(token, purpose=purpose)
    except InvalidToken:
        return None
    return await get_user_model().objects.filter(pk=user_id, is_active=True).afirst()
