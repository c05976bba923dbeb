"""The usage page, its CSV, prices and budgets pages: admins see everyone, members their own."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from mlxmanager.usage.models import Budget, Price
from tests.mlxmanager.audit.factories import rows

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def traffic(boss, member) -> None:  # type: ignore[no-untyped-def]
    rows(2, start=NOW, user_id=member.pk, username="member", requested_model="mine", prompt_tokens=100,
         cached_tokens=30, completion_tokens=7)  # fmt: skip
    rows(1, start=NOW, user_id=boss.pk, username="boss", requested_model="theirs", prompt_tokens=5)


def test_admin_sees_everyone_member_their_own(boss, member, boss_client, member_client) -> None:  # type: ignore[no-untyped-def]
    traffic(boss, member)
    page = boss_client.get("/usage/?by=model").content.decode()
    assert "mine" in page and "theirs" in page and 'id="total-requests">3<' in page
    page = member_client.get("/usage/?by=model&user=boss").content.decode()  # `user` ignored
    assert "mine" in page and "theirs" not in page
    assert (
        'id="total-input">140<' in page
        and 'id="total-cached">60<' in page
        and 'id="total-output">14<' in page
    )


def test_csv_export(boss, member, member_client) -> None:  # type: ignore[no-untyped-def]
    traffic(boss, member)
    r = member_client.get("/usage/export.csv?by=user")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(r.content.decode())))
    assert lines[1][1:8] == ["user", "member", "2", "140", "60", "14", "214"] and len(lines) == 2


def test_bad_filters_are_a_400_with_a_message(boss_client) -> None:  # type: ignore[no-untyped-def]
    r = boss_client.get("/usage/?from=2026-05-01&to=2026-04-01")
    assert r.status_code == 400 and "before" in r.content.decode()
    assert boss_client.get("/usage/export.csv?period=year").status_code == 400


def test_prices_admin_only_and_validated(boss_client, member_client) -> None:  # type: ignore[no-untyped-def]
    r = boss_client.post(
        "/usage/prices/", {"backend": "cloud:acme", "input_per_m": "3", "output_per_m": "15"}
    )
    assert r.status_code == 200 and Price.objects.get(backend="cloud:acme").output_per_m == 15
    r = boss_client.post("/usage/prices/", {"backend": "acme", "input_per_m": "3"})
    assert r.status_code == 400 and "cloud:" in r.content.decode()
    assert boss_client.post("/usage/prices/", {"backend": "cloud:x", "input_per_m": "-2"}).status_code == 400
    assert member_client.post("/usage/prices/", {"backend": "cloud:b", "input_per_m": "1"}).status_code == 403


def test_budgets_page_sets_and_warns(boss, member, boss_client, member_client) -> None:  # type: ignore[no-untyped-def]
    traffic(boss, member)  # the member used 2 × 107 = 214 tokens today
    r = boss_client.post("/usage/budgets/", {"owner": "user", "ref": "member", "tokens_per_day": "250"})
    assert r.status_code == 200 and Budget.objects.get(user=member).tokens_per_day == 250
    page = member_client.get("/usage/").content.decode()
    assert "budget-warning" in page and "Budget at 85 %" in page
    keys_page = member_client.get("/keys/").content.decode()
    assert "Budget at 85 %" in keys_page
    assert (
        boss_client.post(
            "/usage/budgets/", {"owner": "user", "ref": "nobody", "tokens_per_day": "1"}
        ).status_code
        == 400
    )
    assert member_client.post("/usage/budgets/", {"owner": "user", "ref": "member"}).status_code == 403
    r = member_client.get("/usage/budgets/")
    assert r.status_code == 200 and "tokens today" in r.content.decode()
