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


async def test_healthz_is_503_while_the_worker_is_down(no_worker: None, django_user_model: Any) -> None:
    anonymous = await AsyncClient().get("/healthz")
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "degraded"}
    boss = await django_user_model.objects.acreate(username="boss", is_staff=True)
    admin = AsyncClient()
    await admin.aforce_login(boss)
    r = await admin.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["web"]["state"] == "up"
    assert body["worker"]["state"] == "down"


async def test_healthz_details_are_for_admins_and_the_metrics_token(
    no_worker: None, django_user_model: Any, settings: Any
) -> None:
    """Anyone may ask whether it is alive; the worker's state (pid, models, socket errors) is
    for an admin's session or `Authorization: Bearer <MLXM_METRICS_TOKEN>`."""
    settings.MLXM_METRICS_TOKEN = "metrics-token-for-tests"
    member = await django_user_model.objects.acreate(username="member")
    as_member = AsyncClient()
    await as_member.aforce_login(member)
    for client, headers in (
        (AsyncClient(), {}),
        (as_member, {}),
        (AsyncClient(), {"Authorization": "Bearer wrong-token"}),
        (AsyncClient(), {"Authorization": "metrics-token-for-tests"}),
    ):
        r = await client.get("/healthz", headers=headers)
        assert r.status_code == 503 and r.json() == {"status": "degraded"}, headers
    r = await AsyncClient().get("/healthz", headers={"Authorization": "Bearer metrics-token-for-tests"})
    assert r.status_code == 503 and r.json()["worker"]["state"] == "down"
    settings.MLXM_METRICS_TOKEN = ""  # unset: no token opens the details
    r = await AsyncClient().get("/healthz", headers={"Authorization": "Bearer "})
    assert r.json() == {"status": "degraded"}


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


async def test_max_tokens_over_the_profile_cap_is_a_400_in_each_shape(
    no_worker: None, django_user_model: Any
) -> None:
    """Checked before the worker is asked: no worker runs here, yet each API answers 400."""
    user = await django_user_model.objects.acreate(username="u")
    _, secret = await api_key_create_async(user)
    await Profile.objects.acreate(name="m", model_path="/nowhere", max_output_tokens=16)
    auth = {"Authorization": f"Bearer {secret}", "x-api-key": secret}
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ("/v1/chat/completions", {"model": "m", "messages": hi, "max_tokens": 17}, "max_tokens"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 17}, "max_tokens"),
        ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 17}, "max_output_tokens"),
    ]
    for path, payload, param in cases:
        r = await AsyncClient().post(path, payload, content_type="application/json", headers=auth)
        assert r.status_code == 400, (path, r.content)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert "at most 16 tokens" in err["message"]
    r = await AsyncClient().post(
        "/v1/messages",
        {"model": "m", "messages": hi, "max_tokens": 17},
        content_type="application/json",
        headers={**auth, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "at most 16 tokens" in body["error"]["message"]


@pytest.mark.slow
async def test_healthz_of_a_running_gateway_tells_strangers_only_that_it_is_up(gateway: Any) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(gateway.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert gateway.health().json()["worker"]["pid"] > 0  # the tests' client sends the metrics token
