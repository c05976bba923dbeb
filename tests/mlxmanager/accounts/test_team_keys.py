"""The team's keys: every key with its usage (admins), key limits edited with allowed models
chosen from profiles and rule patterns (unknown names refused in the form and on /api), and
members' own usage on their keys page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.test import Client
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import allowed_model_choices, api_key_create, key_usage
from mlxmanager.audit.models import AdminAction, RequestLog
from mlxmanager.profiles.models import Profile
from mlxmanager.rules.services import TargetSpec, rule_create

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def choices() -> list[str]:
    Profile.objects.create(name="tiny", model_path="/models/tiny")
    Profile.objects.create(name="smol", model_path="/models/smol")
    rule_create(name="claude", match_type="glob", pattern="claude-*", targets=[TargetSpec(profile="tiny")])
    rule_create(name="re", match_type="regex", pattern="gpt-[0-9]+", targets=[TargetSpec(profile="tiny")])
    return allowed_model_choices()


@pytest.fixture
def admin_client(client: Client, admin) -> Client:
    client.force_login(admin)
    return client


def _log(key: ApiKey, when: datetime, prompt: int, completion: int) -> None:
    RequestLog.objects.create(
        created_at=when, api_key_id=key.pk, user_id=key.user_id, username=key.user.username,
        key_prefix=key.prefix, endpoint="/v1/chat/completions", status=200,
        prompt_tokens=prompt, completion_tokens=completion,
    )  # fmt: skip


def test_choices_are_profiles_and_exact_or_glob_rule_patterns(choices: list[str]) -> None:
    assert choices == ["smol", "tiny", "claude-*"]  # regex rules are not offered


def test_usage_today_and_this_month_per_key(member, admin) -> None:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    a, _ = api_key_create(user=member, name="a")
    b, _ = api_key_create(user=admin, name="b")
    _log(a, now - timedelta(hours=1), 10, 5)  # today
    _log(a, now - timedelta(days=3), 100, 50)  # this month
    _log(a, now - timedelta(days=10), 1000, 1)  # last month
    _log(b, now - timedelta(days=2), 7, 0)
    usage = key_usage([a.pk, b.pk], now=now)
    assert usage[a.pk] == {"today": 15, "month": 165, "requests_today": 1, "requests_month": 2}
    assert usage[b.pk] == {"today": 0, "month": 7, "requests_today": 0, "requests_month": 1}


def test_team_page_lists_every_key_with_usage_and_filters_by_user(
    admin_client: Client, member, admin
) -> None:
    mine, _ = api_key_create(user=admin, name="boss-laptop")
    theirs, _ = api_key_create(user=member, name="member-ci", tokens_per_day=5000)
    _log(theirs, timezone.now(), 30, 12)
    html = admin_client.get("/keys/team/").content.decode()
    assert "boss-laptop" in html and "member-ci" in html
    row = re.search(rf'<tr id="key-{theirs.pk}".*?</tr>', html, re.S)
    assert row is not None
    assert re.search(r'usage-today">42 <span class="hint">of 5000', row.group(0))
    assert 'usage-month">42<' in row.group(0)
    assert '<td class="budget">' in row.group(0)  # where the budget warning goes

    only = admin_client.get("/keys/team/", {"user": "member"}, **HTMX).content.decode()
    assert only.lstrip().startswith('<div id="team-keys-panel">')
    assert "member-ci" in only and "boss-laptop" not in only


def test_team_page_is_for_admins(member_client: Client) -> None:
    assert member_client.get("/keys/team/").status_code == 403


def test_admin_revokes_someone_elses_key_audited(admin_client: Client, member) -> None:
    key, _ = api_key_create(user=member, name="member-ci")
    resp = admin_client.post(f"/keys/team/{key.pk}/revoke/", {"user": "member"}, **HTMX)
    assert resp.status_code == 200 and "Revoked member-ci of member." in resp.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    entry = AdminAction.objects.get(action="mlxmanager.apikey.revoked", object_id=str(key.pk))
    assert entry.actor_name == "boss"


def test_admin_edits_limits_from_profiles_and_patterns_audited(
    admin_client: Client, member, choices: list[str]
) -> None:
    key, _ = api_key_create(user=member, name="member-ci")
    resp = admin_client.post(
        f"/keys/team/{key.pk}/limits/",
        {"allowed_models": ["tiny", "claude-*"], "rpm_limit": "30", "tokens_per_day": "9000"},
        **HTMX,
    )
    assert resp.status_code == 200, resp.content
    key.refresh_from_db()
    assert (key.allowed_models, key.rpm_limit, key.tokens_per_day) == (["tiny", "claude-*"], 30, 9000)
    assert key.allows("claude-haiku-4-5") and not key.allows("smol")
    entry = AdminAction.objects.get(action="mlxmanager.apikey.changed", object_id=str(key.pk))
    assert entry.data["allowed_models"] == [[], ["tiny", "claude-*"]] and entry.actor_name == "boss"
    # The form shows the key's models ticked.
    html = resp.content.decode()
    assert 'value="tiny" checked' in html and 'value="claude-*" checked' in html
    assert 'value="smol" checked' not in html

    # Cleared: no limits at all.
    admin_client.post(f"/keys/team/{key.pk}/limits/", {"rpm_limit": "", "tokens_per_day": ""}, **HTMX)
    key.refresh_from_db()
    assert (key.allowed_models, key.rpm_limit, key.tokens_per_day) == ([], None, None)


def test_unknown_model_refused_in_the_form(admin_client: Client, member, choices: list[str]) -> None:
    key, _ = api_key_create(user=member, name="member-ci", allowed_models=["tiny"])
    resp = admin_client.post(
        f"/keys/team/{key.pk}/limits/", {"allowed_models": ["tiny", "no-such-model"]}, **HTMX
    )
    assert resp.status_code == 400
    html = unescape(resp.content.decode())
    assert "unknown model 'no-such-model'" in html and 'role="alert"' in html
    key.refresh_from_db()
    assert key.allowed_models == ["tiny"]

    # And on the member's own keys page when creating one.
    member_client = Client()
    member_client.force_login(member)
    resp = member_client.post("/keys/", {"name": "x", "allowed_models": ["no-such-model"]}, **HTMX)
    assert resp.status_code == 400 and "unknown model" in resp.content.decode()
    assert not ApiKey.objects.filter(name="x").exists()


def test_members_see_their_own_usage(member_client: Client, member, admin) -> None:
    key, _ = api_key_create(user=member, name="laptop")
    _log(key, timezone.now(), 20, 3)
    other, _ = api_key_create(user=admin, name="boss-key")
    html = member_client.get("/keys/").content.decode()
    assert re.search(r'usage-today">23<', html) and re.search(r'usage-month">23<', html)
    assert "boss-key" not in html


# --- /api ------------------------------------------------------------------------------------


def test_api_team_keys_with_usage_and_filter(admin_client: Client, member, admin) -> None:
    key, _ = api_key_create(user=member, name="member-ci")
    api_key_create(user=admin, name="boss-key")
    _log(key, timezone.now(), 4, 4)
    rows = admin_client.get("/api/keys/all").json()
    assert {r["name"] for r in rows} == {"member-ci", "boss-key"}
    rows = admin_client.get("/api/keys/all", {"username": "member"}).json()
    assert len(rows) == 1
    assert rows[0]["username"] == "member" and rows[0]["tokens_today"] == 8 and rows[0]["tokens_month"] == 8


def test_api_team_keys_is_for_admins(member_client: Client) -> None:
    r = member_client.get("/api/keys/all")
    assert r.status_code == 403 and r["Content-Type"] == "application/problem+json"


def test_api_edit_limits_and_unknown_model_refused(admin_client: Client, member, choices: list[str]) -> None:
    key, _ = api_key_create(user=member, name="member-ci")
    assert admin_client.get("/api/keys/models").json() == choices
    r = admin_client.patch(
        f"/api/keys/{key.pk}", {"allowed_models": ["smol"], "rpm_limit": 5}, content_type="application/json"
    )
    assert r.status_code == 200 and r.json()["allowed_models"] == ["smol"] and r.json()["rpm_limit"] == 5
    r = admin_client.patch(
        f"/api/keys/{key.pk}", {"allowed_models": ["no-such-model"]}, content_type="application/json"
    )
    assert r.status_code == 400 and r["Content-Type"] == "application/problem+json"
    assert r.json()["param"] == "allowed_models" and "no-such-model" in r.json()["detail"]
    r = admin_client.post(
        "/api/keys/", {"name": "k", "allowed_models": ["nope"]}, content_type="application/json"
    )
    assert r.status_code == 400 and r.json()["param"] == "allowed_models"


def test_api_member_edits_only_their_own_key(
    member_client: Client, member, admin, choices: list[str]
) -> None:
    mine, _ = api_key_create(user=member, name="mine")
    theirs, _ = api_key_create(user=admin, name="theirs")
    ok = member_client.patch(f"/api/keys/{mine.pk}", {"tokens_per_day": 10}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["tokens_per_day"] == 10
    r = member_client.patch(f"/api/keys/{theirs.pk}", {"tokens_per_day": 10}, content_type="application/json")
    assert r.status_code == 404
    theirs.refresh_from_db()
    assert theirs.tokens_per_day is None


def test_api_admin_creates_a_key_for_a_member(admin_client: Client, member, member_client_2: Client) -> None:
    r = admin_client.post(
        "/api/keys/", {"name": "for-member", "username": "member"}, content_type="application/json"
    )
    assert r.status_code == 201 and r.json()["key"].startswith("mlxm-")
    assert ApiKey.objects.get(name="for-member").user == member
    r = admin_client.post("/api/keys/", {"name": "x", "username": "ghost"}, content_type="application/json")
    assert r.status_code == 404 and r.json()["param"] == "username"
    r = member_client_2.post("/api/keys/", {"name": "y", "username": "boss"}, content_type="application/json")
    assert r.status_code == 403 and not ApiKey.objects.filter(name="y").exists()


@pytest.fixture
def member_client_2(member) -> Client:
    c = Client()
    c.force_login(member)
    return c
