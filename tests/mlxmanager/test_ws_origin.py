"""WebSocket origins: a page may open our sockets only from our own origin (scheme, host and
port, as the request's Host says) or one in CSRF_TRUSTED_ORIGINS. Before, only the host was
compared with ALLOWED_HOSTS, so a page on another port of the same host (another web app on
127.0.0.1) could open the audit tail with the admin's cookie."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from mlxmanager.asgi import application

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def _admin_cookie() -> bytes:
    user = await sync_to_async(get_user_model().objects.create_user)(
        username="boss", password="pw-1234567890", is_staff=True
    )
    client = Client()
    await sync_to_async(client.force_login)(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _opens(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    return bool(connected)


@pytest.mark.parametrize(
    ("host", "origin", "opens"),
    [
        (b"127.0.0.1:8000", b"http://127.0.0.1:8000", True),  # our own origin
        (b"127.0.0.1:8000", b"http://127.0.0.1:1", False),  # the finding: another port
        (b"127.0.0.1:8000", b"http://127.0.0.1", False),  # port 80 is another port too
        (b"127.0.0.1:8000", b"https://127.0.0.1:8000", False),  # another scheme
        (b"127.0.0.1:8000", b"http://localhost:8000", False),  # another host, though allowed
        (b"127.0.0.1", b"http://127.0.0.1", True),  # default ports on both sides
        (b"127.0.0.1:80", b"http://127.0.0.1", True),
        (b"evil.example:8000", b"http://evil.example:8000", False),  # same origin, host not allowed
        (b"127.0.0.1:8000", b"null", False),
    ],
)
async def test_audit_tail_origin_must_be_our_own(host: bytes, origin: bytes, opens: bool) -> None:
    cookie = await _admin_cookie()
    headers = [(b"host", host), (b"origin", origin), (b"cookie", cookie)]
    assert await _opens("/audit/ws", headers) is opens


async def test_no_origin_is_refused() -> None:
    cookie = await _admin_cookie()
    assert not await _opens("/audit/ws", [(b"host", b"127.0.0.1:8000"), (b"cookie", cookie)])


async def test_trusted_origins_are_accepted(settings: Any) -> None:
    """Behind a proxy that rewrites Host, the public origin is listed in CSRF_TRUSTED_ORIGINS."""
    settings.CSRF_TRUSTED_ORIGINS = ["https://mlxm.example.org"]
    cookie = await _admin_cookie()
    headers = [(b"host", b"127.0.0.1:8001"), (b"cookie", cookie)]
    assert await _opens("/audit/ws", [*headers, (b"origin", b"https://mlxm.example.org")])
    assert not await _opens("/audit/ws", [*headers, (b"origin", b"https://mlxm.example.org:8443")])
    assert not await _opens("/audit/ws", [*headers, (b"origin", b"http://mlxm.example.org")])


async def test_a_tls_request_compares_with_https(settings: Any) -> None:
    """The scheme is the request's own: wss (TLS, or a trusted proxy's X-Forwarded-Proto) is https."""
    cookie = await _admin_cookie()
    comm = WebsocketCommunicator(
        application,
        "/audit/ws",
        headers=[(b"host", b"mlxm.test:8443"), (b"origin", b"https://mlxm.test:8443"), (b"cookie", cookie)],
    )
    comm.scope["scheme"] = "wss"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "mlxm.test"]
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    assert connected
