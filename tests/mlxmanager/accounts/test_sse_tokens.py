"""The dashboard's event streams (downloads, pool) open with a short-lived `?token=` (purpose
"sse") as well as with the session: EventSource cannot send headers, and a stream opened from
another tab or a reconnect need not carry the cookie. Through the async stack, as served."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient

from mlxmanager.accounts.tokens import token_mint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

STREAMS = ["/downloads/events/", "/pool/events/"]


@pytest.fixture(autouse=True)
def _no_worker(settings: Any, tmp_path: Path) -> None:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")  # the pool stream shows "down"


async def _mint(user: User, purpose: str = "sse", **kw: Any) -> str:
    return await sync_to_async(token_mint)(user_id=user.pk, purpose=purpose, **kw)


async def _first_chunk(resp: Any) -> bytes:
    stream = aiter(resp.streaming_content)
    try:
        return await anext(stream)  # type: ignore[no-any-return]
    finally:
        await stream.aclose()


@pytest.mark.parametrize("path", STREAMS)
async def test_a_valid_token_opens_the_stream_without_a_session(path: str, admin: User) -> None:
    token = await _mint(admin)
    resp = await AsyncClient().get(path, {"token": token})
    assert resp.status_code == 200
    assert resp["Content-Type"] == "text/event-stream"
    assert (await _first_chunk(resp)).startswith(b"retry: ")


@pytest.mark.parametrize("path", STREAMS)
async def test_a_token_of_someone_not_allowed_to_see_the_stream_is_403(path: str, member: User) -> None:
    resp = await AsyncClient().get(path, {"token": await _mint(member)})
    assert resp.status_code == 403


@pytest.mark.parametrize("path", STREAMS)
@pytest.mark.parametrize("kind", ["expired", "garbage", "other purpose", "inactive user"])
async def test_bad_tokens_are_refused(path: str, kind: str, admin: User) -> None:
    if kind == "expired":
        token = await _mint(admin, ttl=60, now=time.time() - 3600)
    elif kind == "garbage":
        token = "not.a.token"
    elif kind == "other purpose":
        token = await _mint(admin, purpose="ws-chat")
    else:
        token = await _mint(admin)
        admin.is_active = False
        await admin.asave(update_fields=["is_active"])
    resp = await AsyncClient().get(path, {"token": token})
    assert resp.status_code == 401
    assert resp["Content-Type"] != "text/event-stream"


@pytest.mark.parametrize("path", STREAMS)
async def test_no_token_and_no_session_is_refused_as_before(path: str, admin: User) -> None:
    resp = await AsyncClient().get(path)
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")
    resp = await AsyncClient().get(path, {"token": ""})
    assert resp.status_code == 302


@pytest.mark.parametrize("path", STREAMS)
async def test_the_session_still_works_alone(path: str, admin: User) -> None:
    client = AsyncClient()
    await client.aforce_login(admin)
    resp = await client.get(path)
    assert resp.status_code == 200
    assert (await _first_chunk(resp)).startswith(b"retry: ")


@pytest.mark.parametrize("path", STREAMS)
async def test_a_bad_token_is_refused_even_with_a_session(path: str, admin: User) -> None:
    """A token sent is a token checked: a broken one is not silently replaced by the cookie."""
    client = AsyncClient()
    await client.aforce_login(admin)
    assert (await client.get(path, {"token": "not.a.token"})).status_code == 401
