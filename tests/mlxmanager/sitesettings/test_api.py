from __future__ import annotations

import pytest
from django.test import Client

from mlxmanager.audit.models import AdminAction
from mlxmanager.profiles.models import Profile

pytestmark = pytest.mark.django_db
JSON = "application/json"


def test_admins_only(client: Client, member_client: Client) -> None:
    assert client.get("/api/settings").status_code == 401
    r = member_client.patch("/api/settings", '{"max_queue": 1}', content_type=JSON)
    assert r.status_code == 403 and r["content-type"] == "application/problem+json"


def test_read_change_and_refuse(boss_client: Client) -> None:
    Profile.objects.create(name="small", model_path="/m/small")
    rows = {r["key"]: r for r in boss_client.get("/api/settings").json()["settings"]}
    assert rows["max_queue"]["source"] == "default" and rows["max_queue"]["env"] == "MLXM_MAX_QUEUE"
    assert rows["disk_cache_bytes"]["applies"] == "restart" and rows["cors_origins"]["applies"] == "web"

    r = boss_client.patch(
        "/api/settings", {"max_queue": 2, "model_aliases": {"gpt-4o": "small"}}, content_type=JSON
    )
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["changed"] == ["max_queue", "model_aliases"]
    assert body["worker"] and "not reachable" in body["worker"]
    rows = {s["key"]: s for s in body["settings"]}
    assert rows["max_queue"]["value"] == 2 and rows["max_queue"]["source"] == "database"
    assert AdminAction.objects.filter(action="mlxmanager.settings.changed").count() == 1

    bad = boss_client.patch("/api/settings", {"max_queue": -5}, content_type=JSON)
    assert bad.status_code == 400 and bad["content-type"] == "application/problem+json"
    problem = bad.json()
    assert problem["param"] == "max_queue" and "between 0 and" in problem["detail"]
    wrong_type = boss_client.patch("/api/settings", {"model_aliases": [1, 2]}, content_type=JSON)
    assert wrong_type.status_code == 400
    assert AdminAction.objects.filter(action="mlxmanager.settings.changed").count() == 1

    # null puts a setting back to its default
    r = boss_client.patch("/api/settings", {"max_queue": None}, content_type=JSON)
    assert {s["key"]: s for s in r.json()["settings"]}["max_queue"]["source"] == "default"
