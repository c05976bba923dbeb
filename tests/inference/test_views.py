"""Health and the gateway's answers while the worker is down (no worker at the socket)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from mlxmanager.accounts.services import api_key_create
from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def no_worker(settings: Any, tmp_path: Path) -> None:
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")
    settings.MLXM_WORKER_CONNECT_TIMEOUT = 0.5


async def test_healthz_is_503_while_the_worker_is_down(no_worker: None) -> None:
    r = await AsyncClient().get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["web"]["state"] == "up"
    assert body["worker"]["state"] == "down"


async def test_requests_get_a_clear_503_in_openai_shape(no_worker: None, django_user_model: Any) -> None:
    user = await django_user_model.objects.acreate(username="u")
    _, secret = await api_key_create_async(user)
    await Profile.objects.acreate(name="m", model_path="/nowhere")
    r = await AsyncClient().post(
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "worker_unavailable"
    assert "not running" in err["message"]


async def api_key_create_async(user: Any) -> tuple[Any, str]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(api_key_create)(user=user, name="k")
