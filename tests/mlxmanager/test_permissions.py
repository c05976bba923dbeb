"""The one admin gate, for sync and async page views and for API routes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied as PageDenied
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from mlxmanager.errors import PermissionDenied
from mlxmanager.permissions import admin_required, is_admin, require_admin

pytest_plugins = ["tests.mlxmanager.people"]


@admin_required
def sync_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@admin_required
async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def _request(user: object) -> HttpRequest:
    request = RequestFactory().get("/somewhere/?x=1")
    request.user = user  # type: ignore[assignment]

    async def auser() -> object:
        return user

    request.auser = auser  # type: ignore[attr-defined]
    return request


def _call(view: object, request: HttpRequest) -> HttpResponse:
    result = view(request)  # type: ignore[operator]
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return result  # type: ignore[no-any-return]


@pytest.mark.django_db
@pytest.mark.parametrize("view", [sync_view, async_view], ids=["sync", "async"])
def test_admin_passes_member_is_refused_anonymous_goes_to_login(
    view: object, boss: User, member: User
) -> None:
    assert _call(view, _request(boss)).content == b"ok"
    with pytest.raises(PageDenied, match="Only admins"):
        _call(view, _request(member))
    anonymous = _call(view, _request(AnonymousUser()))
    assert anonymous.status_code == 302
    assert "/login" in anonymous["Location"] and "next=/somewhere/%3Fx%3D1" in anonymous["Location"]


@pytest.mark.django_db
def test_inactive_staff_is_not_an_admin(boss: User) -> None:
    boss.is_active = False
    assert not is_admin(boss)
    assert not is_admin(None)
    assert not is_admin(object())


@pytest.mark.django_db
def test_require_admin_reads_the_api_auth_user(boss: User, member: User) -> None:
    request = _request(AnonymousUser())
    request.auth = boss  # type: ignore[attr-defined]
    require_admin(request)
    request.auth = member  # type: ignore[attr-defined]
    with pytest.raises(PermissionDenied, match="only admins can see the pool"):
        require_admin(request, "see the pool")


# ---- every route, walked as a member -------------------------------------------------

# Pages a member may open (their own keys and conversations, the playground, the profile list).
MEMBER_PAGES = {
    "home",
    "profiles",
    "playground",
    "playground-conversations",
    "playground-conversation",
    "playground-delete",
    "keys",
    "key-revoke",
    "password-change",
    "v1-docs",
    "v1-openapi",
    *("usage", "usage-export-csv", "connect"),
}
# Pages a member may read (their own figures) but only an admin may change: GET opens, POST is 403.
MEMBER_READ_PAGES = {"usage-budgets"}
# Pages for admins only: every URL and method answers 403 to a member.
ADMIN_PAGES = {
    *("profile-create", "profile-edit", "profile-delete", "pool", "pool-events", "pool-action"),
    *("discover", "hub-token", "model-detail", "model-open", "local-models", "local-model-delete"),
    *("conversion-create", "conversion-action", "downloads", "download-events", "download-action"),
    *("users", "user-change", "audit", "audit-summary", "audit-actions"),
    *("audit-export-csv", "audit-export-jsonl", "credentials", "credential-test", "credential-secret"),
    *("credential-toggle", "credential-delete", "rules", "rule-order", "rule-test", "rule-move"),
    *("rule-toggle", "rule-delete", "workers", "worker-toggle", "worker-delete"),
    *("home-live", "logs", "logs-events", "debug-report"),
    "sso-settings",
    *("team-keys", "team-key-revoke", "team-key-limits", "admin-tokens", "admin-token-revoke"),
    *("rule-edit", "settings", "usage-prices"),
}
# Not dashboard pages: login/logout, the API roots and the /v1 gateway (API-key auth, own tests).
# The first-admin setup pages are 404 once any user exists (tests/mlxmanager/accounts/test_setup.py).
ELSEWHERE = {"login", "logout", "api-root", "openapi-json", "openapi-view", "healthz", "metrics", "setup",
             "setup-start", "password-reset-confirm", "password-reset-complete", None}  # fmt: skip
ELSEWHERE |= {"sso-login", "sso-callback"}  # single sign-on: before login (tests/mlxmanager/sso/)
MEMBER_API = ("/api/keys", "/api/tokens", "/api/conversations")


def _named_routes() -> list[tuple[str, str | None]]:
    from django.urls import URLResolver, get_resolver

    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, str | None]]:
        for p in patterns:
            if isinstance(p, URLResolver):
                if getattr(p, "namespace", None) == "api" or str(p.pattern).startswith(("^v1", "v1")):
                    continue  # /api is walked through its OpenAPI schema; /v1 uses API keys
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            else:
                yield prefix + str(p.pattern), p.name

    return list(walk(get_resolver().url_patterns, "/"))


def _fill(path: str, number: str) -> str:
    path = re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: number if m.group(1) == "int" else "x", path)
    return re.sub(r"\{(?:\w+:)?(\w+)\}", lambda m: number if m.group(1).endswith("_id") else "x", path)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_member_walking_every_route_reaches_only_their_own_things(boss: User, member: User) -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    from mlxmanager.accounts.services import api_key_create
    from mlxmanager.api import api
    from mlxmanager.playground.models import Conversation

    # Things that belong to the admin: the member must not see or touch them.
    boss_key, _ = await sync_to_async(api_key_create)(user=boss, name="boss-key")
    boss_chat = await Conversation.objects.acreate(
        user=boss, title="boss chat", profile_name="p", messages=[]
    )
    client = AsyncClient()
    await client.aforce_login(member)

    unclassified, visited = [], set()
    for path, name in _named_routes():
        if name in ELSEWHERE or path.startswith("/static"):
            continue
        if name not in MEMBER_PAGES | ADMIN_PAGES | MEMBER_READ_PAGES:
            unclassified.append(name)
            continue
        visited.add(name)
        for number in (str(boss_key.pk), str(boss_chat.pk)):
            url = _fill(path, number)
            for method in ("get", "post"):
                r = await getattr(client, method)(url)
                assert r.status_code < 500, (method, url, r.status_code)
                if name in ADMIN_PAGES or (name in MEMBER_READ_PAGES and method == "post"):
                    assert r.status_code == 403, (method, url, r.status_code)
                else:
                    assert r.status_code != 403, (method, url, r.status_code)
    assert not unclassified, f"classify these pages in this test: {unclassified}"
    assert visited == MEMBER_PAGES | ADMIN_PAGES | MEMBER_READ_PAGES

    api_routes = 0
    for path, operations in api.get_openapi_schema()["paths"].items():
        for method in operations:
            for number in (str(boss_key.pk), str(boss_chat.pk)):
                url = _fill(path, number)
                kw = {} if method == "get" else {"data": {"junk": 1}, "content_type": "application/json"}
                r = await getattr(client, method)(url, **kw)
                api_routes += 1
                assert r.status_code < 500, (method, url, r.status_code)
                member_may = path.startswith(MEMBER_API) or (
                    # the profile list; their own usage and budgets (mlxmanager/usage/api.py)
                    path.startswith(("/api/profiles", "/api/usage", "/api/budgets", "/api/prices"))
                    and method == "get"
                )
                if not member_may:
                    # The role is checked before the body: a 403, whatever was sent.
                    assert r.status_code == 403, (method, url, r.status_code, r.content)
                    assert r["Content-Type"] == "application/problem+json"

    assert api_routes > 60

    # The admin's key and conversation were neither shown nor changed.
    keys = (await client.get("/api/keys/")).json()
    assert all(k["name"] != "boss-key" for k in keys)
    assert (await client.get(f"/api/conversations/{boss_chat.pk}")).status_code == 404
    await boss_key.arefresh_from_db()
    assert boss_key.revoked_at is None
    assert await Conversation.objects.filter(pk=boss_chat.pk).aexists()
