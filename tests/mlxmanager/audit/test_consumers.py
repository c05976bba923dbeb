from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from mlxmanager.asgi import application
from mlxmanager.audit import recorder as rec

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def _connect(username: str, staff: bool) -> WebsocketCommunicator:
    from django.test import Client

    user = await sync_to_async(get_user_model().objects.create_user)(username=username, password="pw-1234567890",
                                                                     is_staff=staff)  # fmt: skip
    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return WebsocketCommunicator(
        application, "/audit/ws", headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
    )


async def test_live_tail_pushes_flushed_rows_to_admins() -> None:
    comm = await _connect("boss", True)
    connected, _ = await comm.connect()
    assert connected
    r = rec.Recorder()
    a = rec.RequestAudit(endpoint="/v1/chat/completions", requested_model="tail-model", username="ann")
    a.finish(200)
    r.add(a)  # captures this event loop, where the channel layer lives
    await sync_to_async(r.flush)()
    msg = await comm.receive_json_from(timeout=5)
    assert msg["type"] == "rows" and msg["count"] == 1
    assert "tail-model" in msg["html"] and "<tr" in msg["html"]
    await comm.disconnect()


async def test_members_are_refused() -> None:
    comm = await _connect("member", False)
    connected, code = await comm.connect()
    assert not connected and code == 4403
