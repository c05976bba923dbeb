"""/api/usage, /api/prices and /api/budgets: figures, admin checks, RFC 7807 errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.mlxmanager.audit.factories import rows

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def put(client, url: str, body: dict) -> object:  # type: ignore[no-untyped-def, type-arg]
    return client.put(url, json.dumps(body), content_type="application/json")


def test_usage_figures(boss, member, boss_client, member_client) -> None:  # type: ignore[no-untyped-def]
    rows(2, start=NOW, user_id=member.pk, username="member", backend="cloud:acme", prompt_tokens=1000,
         cached_tokens=500, completion_tokens=100)  # fmt: skip
    rows(1, start=NOW, user_id=boss.pk, username="boss", backend="local:m", prompt_tokens=10)
    assert put(boss_client, "/api/prices", {"backend": "cloud:acme", "input_per_m": 2, "cached_per_m": 1,
                                             "output_per_m": 8}).status_code == 200  # fmt: skip
    body = boss_client.get("/api/usage?by=backend").json()
    acme = next(t for t in body["totals"] if t["group"] == "cloud:acme")
    # (1000 × 2 + 1000 × 1 + 200 × 8) / 1M = 0.0046
    assert acme["input_tokens"] == 1000 and acme["cached_tokens"] == 1000 and acme["spend"] == "0.0046"
    assert body["total"]["requests"] == 3
    mine = member_client.get("/api/usage?by=user&user=boss").json()
    assert [t["group"] for t in mine["totals"]] == ["member"]
    csv_text = member_client.get("/api/usage.csv?by=user").content.decode()
    assert csv_text.startswith("period,group_by,group") and ",member," in csv_text


def test_errors_are_problems(boss_client, member_client, member) -> None:  # type: ignore[no-untyped-def]
    r = boss_client.get("/api/usage?period=fortnight")
    assert r.status_code == 400 and r["Content-Type"] == "application/problem+json"
    assert r.json()["param"] == "period"
    r = put(boss_client, "/api/prices", {"backend": "nowhere", "input_per_m": 1})
    assert r.status_code == 400 and r.json()["param"] == "backend"
    assert put(member_client, "/api/prices", {"backend": "cloud:a"}).status_code == 403
    assert put(member_client, f"/api/budgets/users/{member.pk}", {"tokens_per_day": 9}).status_code == 403
    r = put(boss_client, "/api/budgets/users/999999", {"tokens_per_day": 9})
    assert r.status_code == 404
    r = put(boss_client, f"/api/budgets/users/{member.pk}", {"tokens_per_day": -3})
    assert r.status_code == 400 and r.json()["param"] == "tokens_per_day"
    assert boss_client.delete("/api/prices?backend=cloud:none").status_code == 404


def test_budgets_set_read_and_remove(boss_client, member_client, member) -> None:  # type: ignore[no-untyped-def]
    from mlxmanager.accounts.models import ApiKey

    key = ApiKey.objects.create(user=member, name="k", prefix="mk-2", digest="e" * 64)
    r = put(boss_client, f"/api/budgets/keys/{key.pk}", {"tokens_per_month": 1000, "spend_per_month": "2.50"})
    assert r.status_code == 200 and r.json()["api_key_id"] == key.pk and r.json()["spend_per_month"] == "2.50"
    assert {s["what"] for s in r.json()["status"]} == {"tokens this month", "spend this month"}
    put(boss_client, f"/api/budgets/users/{member.pk}", {"tokens_per_day": 50})
    mine = member_client.get("/api/budgets").json()
    assert {(b["user_id"], b["api_key_id"]) for b in mine} == {(member.pk, None), (None, key.pk)}
    r = put(boss_client, f"/api/budgets/users/{member.pk}", {})
    assert r.status_code == 200 and r.json()["tokens_per_day"] is None
    assert len(member_client.get("/api/budgets").json()) == 1
    assert boss_client.delete("/api/prices?backend=cloud:none").status_code == 404
