from __future__ import annotations

import json
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


# ---- issue 18 item 8: the filters reach everything; dates validated; admin-changes filters ----


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_filtered_export_holds_only_the_filtered_rows() -> None:
    """ "admin, errors only": the page's export links carry the filter, and the export is
    those rows and no others (CSV and JSON Lines)."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from django.test import AsyncClient

    def seed() -> Any:
        rows(3, username="admin", status=500, error_type="upstream_error")
        rows(4, username="admin", status=200)
        rows(5, username="bob", status=500, error_type="upstream_error", start=T0 + timedelta(minutes=5))
        return get_user_model().objects.create_superuser(username="boss", password="pw-boss-123456")

    client = AsyncClient()
    await client.aforce_login(await sync_to_async(seed)())

    async def body(url: str) -> str:
        r = await client.get(url)
        assert r.status_code == 200
        return b"".join([c async for c in r.streaming_content]).decode()

    page = (await client.get("/audit/", {"user": "admin", "status": "error"})).content.decode()
    link = page.split('href="/audit/export.csv?')[1].split('"')[0].replace("&amp;", "&")
    assert "user=admin" in link and "status=error" in link
    lines = (await body("/audit/export.csv?" + link)).strip().splitlines()
    assert len(lines) == 1 + 3
    assert all(",admin," in line and ",500,upstream_error," in line for line in lines[1:])
    jsonl = page.split('href="/audit/export.jsonl?')[1].split('"')[0].replace("&amp;", "&")
    got = [json.loads(line) for line in (await body("/audit/export.jsonl?" + jsonl)).splitlines()]
    assert len(got) == 3 and {(g["username"], g["status"]) for g in got} == {("admin", 500)}


def test_the_filter_form_swaps_totals_chart_export_and_table_together(boss_client: Client) -> None:
    rows(2, username="ann", requested_model="alpha")
    rows(6, username="bob", requested_model="beta")
    since, until = (
        (T0 - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        (T0 + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    )
    r = boss_client.get(
        "/audit/",
        {"user": "ann", "since": since, "until": until},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="audit-results",
    )
    html = r.content.decode()
    assert r.status_code == 200 and "<html" not in html and 'id="audit-results"' in html
    # The summary, the export links and the table all carry the same filter.
    summary_url = html.split('hx-get="/audit/summary/?')[1].split('"')[0].replace("&amp;", "&")
    assert "user=ann" in summary_url and "export.csv?" in html and html.count("user=ann") >= 3
    summary = boss_client.get("/audit/summary/?" + summary_url).content.decode()
    assert "alpha" in summary and "beta" not in summary and ">bob<" not in summary
    assert "<title>" in summary and "2 requests" in summary  # the chart's bar for that hour
    assert html.count('<td class="num">10</td>') == 2  # two rows of ann's in the table


def test_to_before_from_is_refused_with_a_clear_message(boss_client: Client) -> None:
    rows(3)
    params = {"since": "2025-03-02T10:00", "until": "2025-03-01T10:00", "user": "u"}
    r = boss_client.get("/audit/", params)
    html = r.content.decode()
    assert r.status_code == 400 and "must be later than" in html and "No requests match." in html
    assert 'value="2025-03-02T10:00"' in html and 'value="2025-03-01T10:00"' in html and 'value="u"' in html
    assert "export.csv" not in html  # no export of a range that cannot match
    s = boss_client.get("/audit/summary/", params)
    assert (
        s.status_code == 400
        and "must be later than" in s.content.decode()
        and "<svg" not in s.content.decode()
    )
    e = boss_client.get("/audit/export.csv", params)
    assert e.status_code == 400 and "must be later than" in e.content.decode()
    api = boss_client.get("/api/audit/requests", params)
    assert api.status_code == 400 and "must be later than" in api.json()["detail"]
    same = boss_client.get("/audit/", {"since": "2025-03-01T10:00", "until": "2025-03-01T10:00"})
    assert same.status_code == 400


def _changes(boss: Any, member: Any) -> None:
    from mlxmanager.audit.services import log_action

    log_action(member, "mlxmanager.user.changed", user=boss, data={"is_active": [True, False]})
    log_action(None, "mlxmanager.rule.changed", user=boss, object_type="rule", object_repr="claude",
               data={"targets": [["local:a"], ["local:b", "cloud:c"]], "enabled": [False, True],
                     "updated": [None, "2025-03-01T12:00:00+00:00"]})  # fmt: skip
    log_action(None, "mlxmanager.audit.pruned", object_type="audit", object_repr="old rows",
               data={"days": 30, "deleted": 12})  # fmt: skip


def test_admin_changes_filter_by_actor_object_and_action(boss_client: Client, boss: Any, member: Any) -> None:
    _changes(boss, member)
    by_actor = boss_client.get("/audit/actions/", {"actor": "system"}).content.decode()
    assert "<td>Audit log pruned</td>" in by_actor and "<td>Routing rule changed</td>" not in by_actor
    by_object = boss_client.get("/audit/actions/", {"object": "rule"}).content.decode()
    assert "<td>Routing rule changed</td>" in by_object and "<td>Audit log pruned</td>" not in by_object
    by_name = boss_client.get("/audit/actions/", {"object": "claud"}).content.decode()
    assert "<td>Routing rule changed</td>" in by_name and "<td>User changed</td>" not in by_name
    by_action = boss_client.get(
        "/audit/actions/", {"action": "mlxmanager.user.changed", "actor": boss.username}
    )
    html = by_action.content.decode()
    assert "<td>User changed</td>" in html and "<td>Routing rule changed</td>" not in html
    assert "selected>User changed" in html
    none = boss_client.get("/audit/actions/", {"actor": "nobody"}).content.decode()
    assert "No admin changes match." in none
    bad = boss_client.get("/audit/actions/", {"action": "drop table"})
    assert bad.status_code == 400 and "is not an audit action" in bad.content.decode()


def test_admin_changes_show_readable_field_diffs(boss_client: Client, boss: Any, member: Any) -> None:
    _changes(boss, member)
    html = boss_client.get("/audit/actions/").content.decode()
    assert "<dt>is_active</dt><dd><del>yes</del>" in html and "<ins>no</ins>" in html
    assert "<del>local:a</del>" in html and "<ins>local:b, cloud:c</ins>" in html
    assert "<dt>updated</dt><dd><del>—</del>" in html and "2025-03-01 12:00:00 UTC" in html
    assert "<dt>days</dt><dd>30</dd>" in html
    for repr_ in ("[True", "False]", "None", "['", "{'"):
        assert repr_ not in html


def test_admin_changes_pages_keep_the_filter(boss_client: Client, boss: Any) -> None:
    from mlxmanager.audit.services import log_action

    for i in range(55):
        log_action(None, "mlxmanager.rule.created", user=boss, object_type="rule", object_repr=f"r{i}")
    log_action(None, "mlxmanager.audit.pruned", object_type="audit")
    html = boss_client.get("/audit/actions/", {"object": "rule"}).content.decode()
    older = html.split('<nav class="pager"><a href="?')[1].split('"')[0].replace("&amp;", "&")
    assert "object=rule" in older
    rest = boss_client.get("/audit/actions/?" + older).content.decode()
    assert rest.count("<td>Routing rule created</td>") == 5 and "<td>Audit log pruned</td>" not in rest
