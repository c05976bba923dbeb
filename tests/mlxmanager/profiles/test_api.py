"""/api/profiles: everyone reads, admins write; errors are problem+json naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxmanager.profiles.models import Profile
from tests.mlxmanager.accounts.test_api import ApiClient, assert_problem

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api(admin) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(admin)


@pytest.fixture
def member_api(member) -> ApiClient:  # type: ignore[no-untyped-def]
    return ApiClient(member)


@pytest.fixture
def model(make_model_dir) -> Path:  # type: ignore[no-untyped-def]
    return make_model_dir("qwen")


def test_create_get_list_update_delete(admin_api: ApiClient, model: Path) -> None:
    resp = admin_api.post(
        "/api/profiles",
        {"name": "qwen", "model_path": str(model), "defaults": {"temperature": 0.2}, "kv_bits": 8},
    )
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["name"] == "qwen" and body["defaults"] == {"temperature": 0.2} and body["kv_bits"] == 8
    assert body["max_concurrent"] == 32 and body["enabled"] is True

    assert admin_api.get("/api/profiles/qwen").json()["id"] == body["id"]
    assert [p["name"] for p in admin_api.get("/api/profiles").json()] == ["qwen"]

    resp = admin_api.client.patch(
        "/api/profiles/qwen",
        {"pinned": True, "kv_bits": None, "description": "pinned one"},
        content_type="application/json",
        headers={"X-CSRFToken": admin_api.csrf},
    )
    assert resp.status_code == 200, resp.content
    assert resp.json()["pinned"] is True and resp.json()["kv_bits"] is None
    assert resp.json()["defaults"] == {"temperature": 0.2}  # untouched

    resp = admin_api.client.delete("/api/profiles/qwen", headers={"X-CSRFToken": admin_api.csrf})
    assert resp.status_code == 204
    assert not Profile.objects.exists()


def test_errors_are_problems_naming_the_field(admin_api: ApiClient, model: Path) -> None:
    body = assert_problem(
        admin_api.post("/api/profiles", {"name": "bad name", "model_path": str(model)}), 400
    )
    assert body["param"] == "name"
    body = assert_problem(admin_api.post("/api/profiles", {"name": "x", "model_path": "/nowhere"}), 400)
    assert body["param"] == "model_path" and "/nowhere" in body["detail"]
    body = assert_problem(
        admin_api.post("/api/profiles", {"name": "x", "model_path": str(model), "max_concurrent": 0}), 400
    )
    assert body["param"] == "max_concurrent"
    # Typed defaults: out-of-range values fail schema validation with the field's location.
    body = assert_problem(
        admin_api.post("/api/profiles", {"name": "x", "model_path": str(model), "defaults": {"top_p": 2}}),
        400,
    )
    assert any("top_p" in str(e["loc"]) for e in body["errors"])
    admin_api.post("/api/profiles", {"name": "x", "model_path": str(model)})
    body = assert_problem(admin_api.post("/api/profiles", {"name": "x", "model_path": str(model)}), 409)
    assert body["param"] == "name"
    assert_problem(admin_api.get("/api/profiles/missing"), 404)


def test_members_read_but_cannot_write(member_api: ApiClient, model: Path) -> None:
    Profile.objects.create(name="shared", model_path=str(model))
    assert [p["name"] for p in member_api.get("/api/profiles").json()] == ["shared"]
    assert member_api.get("/api/profiles/shared").status_code == 200
    assert_problem(member_api.post("/api/profiles", {"name": "mine", "model_path": str(model)}), 403)
    resp = member_api.client.patch(
        "/api/profiles/shared",
        {"pinned": True},
        content_type="application/json",
        headers={"X-CSRFToken": member_api.csrf},
    )
    assert_problem(resp, 403)
    assert_problem(
        member_api.client.delete("/api/profiles/shared", headers={"X-CSRFToken": member_api.csrf}), 403
    )
    assert Profile.objects.get().pinned is False


def test_writes_need_csrf_and_login(admin_api: ApiClient, model: Path, client) -> None:  # type: ignore[no-untyped-def]
    resp = admin_api.post("/api/profiles", {"name": "x", "model_path": str(model)}, csrf=False)
    assert resp.status_code == 403
    assert_problem(client.get("/api/profiles"), 401)
    assert not Profile.objects.exists()


MEMBER_FIELDS = {
    "id", "name", "kind", "description", "context_length", "max_output_tokens", "is_default", "enabled"
}  # fmt: skip


def test_members_see_only_what_they_need_to_pick_a_model(
    member_api: ApiClient, admin_api: ApiClient, model: Path
) -> None:
    """The model's path on disk and the system prompt are the admin's business: a member sees
    the name, kind and description (what the playground's model picker shows)."""
    Profile.objects.create(
        name="shared", model_path=str(model), system_prompt="SECRET-SYSTEM-PROMPT", description="Qwen"
    )
    for url in ("/api/profiles", "/api/profiles/shared"):
        resp = member_api.get(url)
        assert resp.status_code == 200
        body = resp.json()
        (item,) = body if isinstance(body, list) else [body]
        assert set(item) == MEMBER_FIELDS, url
        assert item["name"] == "shared" and item["description"] == "Qwen"
        assert str(model) not in resp.content.decode() and "SECRET-SYSTEM-PROMPT" not in resp.content.decode()
        full = admin_api.get(url).json()
        (full,) = full if isinstance(full, list) else [full]
        assert full["model_path"] == str(model) and full["system_prompt"] == "SECRET-SYSTEM-PROMPT"
        assert full["kv_bits"] is None and "keep_alive_seconds" in full


def test_prompt_cache_share_in_bytes_or_a_size(admin_api: ApiClient, model: Path) -> None:
    resp = admin_api.post(
        "/api/profiles", {"name": "a", "model_path": str(model), "prompt_cache_bytes": "2GB"}
    )
    assert resp.status_code == 201, resp.content
    assert resp.json()["prompt_cache_bytes"] == 2 * 1000**3
    resp = admin_api.client.patch(
        "/api/profiles/a",
        {"prompt_cache_bytes": 1_000_000},
        content_type="application/json",
        headers={"X-CSRFToken": admin_api.csrf},
    )
    assert resp.status_code == 200 and resp.json()["prompt_cache_bytes"] == 1_000_000
    resp = admin_api.client.patch(
        "/api/profiles/a",
        {"prompt_cache_bytes": None},
        content_type="application/json",
        headers={"X-CSRFToken": admin_api.csrf},
    )
    assert resp.status_code == 200 and resp.json()["prompt_cache_bytes"] is None  # the worker's default
    for bad in ("lots", -1, "50%"):
        body = assert_problem(
            admin_api.post(
                "/api/profiles", {"name": "b", "model_path": str(model), "prompt_cache_bytes": bad}
            ),
            400,
        )
        assert body["param"] == "prompt_cache_bytes", bad
