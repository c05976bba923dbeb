from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from mlxmanager.audit.models import RequestLog
from tests.mlxmanager.audit.factories import T0, rows

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def test_admins_only(client: Client, member_client: Client) -> None:
    assert client.get("/audit/").status_code == 302
    for url in ("/audit/", "/audit/summary/", "/audit/actions/", "/audit/export.csv"):
        assert member_client.get(url).status_code == 403
    assert member_client.get("/api/audit/requests").status_code == 403


def test_the_page_renders_many_rows_with_a_bounded_number_of_queries(
    boss_client: Client, django_assert_max_num_queries: Any
) -> None:
    rows(3000, username="ann")
    rows(10, username="bob", status=429, error_type="rate_limited", start=T0 + timedelta(days=1))
    with django_assert_max_num_queries(3):  # session, user, one page query
        page = boss_client.get("/audit/")
    html = page.content.decode()
    assert page.status_code == 200 and html.count('<tr class="failed">') == 10 and "Older" in html
    older = html.split('href="?before=')[1].split('"')[0]
    with django_assert_max_num_queries(3):
        deep = boss_client.get(f"/audit/?before={older}&user=ann", **HTMX)
    assert (
        deep.status_code == 200 and "<html" not in deep.content.decode() and "Newer" in deep.content.decode()
    )
    with django_assert_max_num_queries(3):
        assert boss_client.get("/audit/?status=error").content.decode().count("rate_limited") == 10


def test_bad_filters_say_what_is_wrong(boss_client: Client) -> None:
    r = boss_client.get("/audit/?since=tomorrow")
    assert r.status_code == 400 and "is not a date" in r.content.decode()
    assert boss_client.get("/api/audit/requests?status=x").status_code == 400


def test_summary_totals_and_chart(boss_client: Client, django_assert_max_num_queries: Any) -> None:
    rows(5, requested_model="alpha", username="ann")
    with django_assert_max_num_queries(8):  # session, user, three for the totals, three for the chart
        r = boss_client.get("/audit/summary/", {"since": (T0 - timedelta(hours=1)).isoformat(),
                                                "until": (T0 + timedelta(hours=2)).isoformat()})  # fmt: skip
    html = r.content.decode()
    assert r.status_code == 200 and "<svg" in html and "alpha" in html and "ann" in html
    api = boss_client.get(
        "/api/audit/summary", {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
    ).json()
    assert api["by_model"][0] == {
        "key": "alpha",
        "requests": 5,
        "errors": 0,
        "prompt_tokens": 50,
        "completion_tokens": 25,
    }
    assert sum(b["requests"] for b in api["timeline"]) == 5


def test_exports_stream(boss_client: Client) -> None:
    rows(3, requested_model="x")
    r = boss_client.get("/audit/export.csv?model=x")
    assert r.streaming and r["Content-Type"].startswith("text/csv")
    assert r["Content-Disposition"].startswith('attachment; filename="audit-')
    r = boss_client.get("/audit/export.jsonl")
    assert r["Content-Type"] == "application/x-ndjson"


def test_api_pages(boss_client: Client) -> None:
    rows(7)
    first = boss_client.get("/api/audit/requests?size=5").json()
    assert len(first["items"]) == 5 and first["older"] and first["newer"] is None
    rest = boss_client.get(f"/api/audit/requests?size=5&before={first['older']}").json()
    assert len(rest["items"]) == 2 and rest["older"] is None
    assert {i["id"] for i in first["items"]} | {i["id"] for i in rest["items"]} == set(
        RequestLog.objects.values_list("id", flat=True)
    )


def test_admin_changes_page(boss_client: Client, member: Any) -> None:
    member.is_active = False
    member.save()
    html = boss_client.get("/audit/actions/").content.decode()
    assert "User changed" in html and "is_active" in html
    assert boss_client.get("/api/audit/actions").json()[0]["action"] == "mlxmanager.user.changed"
