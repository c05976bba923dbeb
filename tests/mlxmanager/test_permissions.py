"""The one admin gate, for sync and async page views and for API routes."""

from __future__ import annotations

import asyncio

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
