"""The Workers page: register (with clear errors), health shown, disable, remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from mlxmanager.workers.models import Worker

pytest_plugins = ["tests.mlxmanager.people"]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def nobody_listens(settings: Any, tmp_path: Path) -> None:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "none.sock")
    settings.MLXM_WORKER_CONNECT_TIMEOUT = 0.3
    settings.MLXM_WORKER_SECRET = b"0123456789abcdef0123"


async def test_register_show_disable_remove(boss: User, nobody_listens: None) -> None:
    c = AsyncClient()
    await c.aforce_login(boss)
    page = (await c.get("/workers/")).content.decode()
    assert "No remote workers registered." in page and "embedded" in page

    r = await c.post("/workers/", {"name": "w2", "address": "not an address"}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and "HOST:PORT" in r.content.decode()
    assert not await Worker.objects.aexists()

    r = await c.post("/workers/", {"name": "w2", "address": "127.0.0.1:9"}, headers={"HX-Request": "true"})
    body = r.content.decode()
    assert "Registered w2." in body and "tcp://127.0.0.1:9" in body
    assert body.count('class="badge warn">down<') == 2  # nothing listens, embedded or remote
    w = await Worker.objects.aget(name="w2")

    r = await c.post(f"/workers/{w.pk}/toggle/", {"enabled": "0"}, headers={"HX-Request": "true"})
    assert "w2 disabled." in r.content.decode()
    await w.arefresh_from_db()
    assert not w.enabled

    r = await c.post(f"/workers/{w.pk}/delete/", headers={"HX-Request": "true"})
    assert "Removed w2." in r.content.decode()
    assert not await Worker.objects.aexists()
    r = await c.post(f"/workers/{w.pk}/delete/")
    assert r.status_code == 404
