"""/api/pool (async operations) against a real worker process and the tiny demo model."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import AsyncClient

from mlxmanager.profiles.models import Profile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

PROBLEM = "application/problem+json"


@pytest.fixture
def tiny(demo_models: dict[str, Path]) -> Profile:
    return Profile.objects.create(name="tiny-chat", model_path=str(demo_models["tiny-random"]))


def problem(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.content
    assert resp["Content-Type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def loaded(api: AsyncClient) -> dict[str, dict]:
    body = (await api.get("/api/pool")).json()
    return {m["name"]: m for m in body["loaded"]}


@pytest.mark.slow
async def test_load_pin_unload_round_trip(admin_aclient: AsyncClient, worker: str, tiny: Profile) -> None:
    api = admin_aclient
    body = (await api.get("/api/pool")).json()
    assert body["worker"] == "up"
    assert body["loaded"] == [] and body["not_loaded"] == ["tiny-chat"]
    assert body["memory"]["limit_bytes"] > 0

    resp = await api.post("/api/pool/tiny-chat/load")
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"message": "Loaded tiny-chat."}
    model = (await loaded(api))["tiny-chat"]
    assert model["weight_bytes"] > 0 and model["pinned"] is False
    assert model["weights_form"] == "float32" and model["kv_bytes"] == 0
    memory = (await api.get("/api/pool")).json()["memory"]
    assert memory["weights_bytes"] == model["weight_bytes"]
    parts = ("process_bytes", "weights_bytes", "kv_bytes", "prompt_cache_bytes")
    assert memory["used_bytes"] == sum(memory[k] for k in parts) and memory["process_bytes"] > 0
    assert memory["free_bytes"] == memory["limit_bytes"] - memory["used_bytes"]
    assert memory["mlx_peak_bytes"] >= memory["mlx_active_bytes"] > 0
    assert model["profile"] == "tiny-chat" and model["active_requests"] == 0
    assert model["cache_hit_rate"] is None  # no prompts yet
    assert (await api.get("/api/pool")).json()["not_loaded"] == []

    assert (await api.post("/api/pool/tiny-chat/pin")).status_code == 200
    assert (await loaded(api))["tiny-chat"]["pinned"] is True

    # Pinned keeps it from eviction, not from an admin: an explicit unload works.
    assert (await api.post("/api/pool/tiny-chat/unload")).json() == {"message": "Unloaded tiny-chat."}
    assert await loaded(api) == {}

    # Unloading what isn't loaded is a conflict, with the worker's reason.
    body = problem(await api.post("/api/pool/tiny-chat/unload"), 409)
    assert "not loaded" in body["detail"]


@pytest.mark.slow
async def test_a_load_that_does_not_fit_is_a_readable_503(
    admin_aclient: AsyncClient, start_worker, tiny: Profile
) -> None:  # type: ignore[no-untyped-def]
    start_worker(memory_limit_bytes=64 * 1024)
    body = problem(await admin_aclient.post("/api/pool/tiny-chat/load"), 503)
    assert body["detail"].startswith("Not enough memory")
    assert "tiny-chat" in body["detail"]
    assert (await admin_aclient.get("/api/pool")).json()["loaded"] == []


async def test_worker_down(admin_aclient: AsyncClient, no_worker: str) -> None:
    await Profile.objects.acreate(name="p", model_path="/m")
    body = (await admin_aclient.get("/api/pool")).json()
    assert body["worker"] == "down" and body["not_loaded"] == ["p"]
    body = problem(await admin_aclient.post("/api/pool/p/load"), 503)
    assert "not running" in body["detail"]


async def test_bad_action_and_unknown_profile(admin_aclient: AsyncClient, no_worker: str) -> None:
    problem(await admin_aclient.post("/api/pool/p/explode"), 400)
    problem(await admin_aclient.post("/api/pool/missing/load"), 404)


async def test_members_are_refused(member_aclient: AsyncClient, no_worker: str) -> None:
    problem(await member_aclient.get("/api/pool"), 403)
    problem(await member_aclient.post("/api/pool/p/load"), 403)


async def test_anonymous_is_401(no_worker: str) -> None:
    problem(await AsyncClient().get("/api/pool"), 401)


async def test_actions_need_csrf(admin, no_worker: str) -> None:  # type: ignore[no-untyped-def]
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(admin)
    assert (await client.post("/api/pool/p/load")).status_code == 403
