"""Stream tokens die with the login that minted them: after logout a chat (or SSE) token
minted before is refused, though it has not expired."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient, Client

from mlxmanager.accounts.tokens import InvalidToken, token_mint, token_verify
from mlxmanager.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def _logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _mint_through_the_api(client: Client, purpose: str) -> str:
    resp = client.post(f"/api/tokens/stream?purpose={purpose}", headers={"X-CSRFToken": "x"})
    assert resp.status_code == 200, resp.content
    return resp.json()["token"]  # type: ignore[no-any-return]


def test_a_chat_token_minted_before_logout_is_refused_after(member: User) -> None:
    client = _logged_in(member)
    token = _mint_through_the_api(client, "ws-chat")
    assert token_verify(token, purpose="ws-chat") == member.pk
    assert client.post("/logout/").status_code == 302
    with pytest.raises(InvalidToken):
        token_verify(token, purpose="ws-chat")
    # Logging in again gives working tokens; the old one stays dead.
    client = _logged_in(member)
    fresh = _mint_through_the_api(client, "ws-chat")
    assert token_verify(fresh, purpose="ws-chat") == member.pk
    with pytest.raises(InvalidToken):
        token_verify(token, purpose="ws-chat")


def test_logout_does_not_touch_other_users_tokens(member: User, admin: User) -> None:
    theirs = token_mint(user_id=admin.pk, purpose="ws-chat")
    assert _logged_in(member).post("/logout/").status_code == 302
    assert token_verify(theirs, purpose="ws-chat") == admin.pk


@pytest.mark.asyncio
async def test_the_chat_socket_refuses_a_token_from_before_logout(member: User) -> None:
    client = await sync_to_async(_logged_in)(member)
    token = await sync_to_async(_mint_through_the_api)(client, "ws-chat")
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]

    comm = WebsocketCommunicator(application, f"/v1/ws/chat?token={token}", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.disconnect()

    await sync_to_async(client.post)("/logout/")
    comm = WebsocketCommunicator(application, f"/v1/ws/chat?token={token}", headers=headers)
    connected, code = await comm.connect(timeout=10)
    assert not connected and code == 4401


@pytest.mark.asyncio
async def test_an_sse_token_from_before_logout_is_refused(admin: User) -> None:
    client = await sync_to_async(_logged_in)(admin)
    token = await sync_to_async(_mint_through_the_api)(client, "sse")
    await sync_to_async(client.post)("/logout/")
    assert (await AsyncClient().get("/downloads/events/", {"token": token})).status_code == 401
