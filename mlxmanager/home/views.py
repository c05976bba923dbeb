"""The home page. Admins get the dashboard (health, loaded models, the last hour's traffic,
today's top users and models, running downloads; live) and, on a fresh install, the
first-run checklist; members get their own usage, their keys and the playground.

Live updates: a hidden element polls `home/live/` every LIVE_EVERY_S seconds (hx-trigger
"every"); the answer swaps, out of band, only the bodies of the dashboard's cards and the
checklist's tick marks. None of those holds a link, button or field, so an update never takes
the keyboard focus or the scroll position away from the admin.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase, HttpResponseNotAllowed
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect

from mlxmanager.home import selectors
from mlxmanager.permissions import DENIED, is_admin

LIVE_EVERY_S = 5
SNIPPET_MODEL = "smollm2-135m-instruct"


def _now() -> datetime:
    return timezone.now()


def _dashboard(*, user: User, checklist: bool) -> dict[str, Any]:
    """The database half of the dashboard (one thread, a bounded number of queries)."""
    now = _now()
    data: dict[str, Any] = {
        "traffic": selectors.traffic(now=now),
        "today": selectors.today(now=now),
        "downloads": selectors.running_downloads(),
    }
    if checklist:
        data["checklist"] = selectors.checklist(user=user)
    return data


def _snippet_model(profiles: list[Any]) -> str:
    chat = [p for p in profiles if p.kind in ("llm", "vision")]
    return chat[0].name if chat else (profiles[0].name if profiles else SNIPPET_MODEL)


def _admin_page(user: User) -> dict[str, Any]:
    profiles = selectors.served_profiles()
    checklist = selectors.checklist(user=user)
    data = _dashboard(user=user, checklist=False)
    return {**data, "profiles": profiles, "checklist": checklist, "snippet_model": _snippet_model(profiles)}


def _member_page(user: User) -> dict[str, Any]:
    now = _now()
    profiles = selectors.served_profiles()
    return {
        "profiles": profiles,
        "usage_today": selectors.usage(user=user, since=selectors.start_of_today(now), now=now),
        "usage_week": selectors.usage(user=user, since=now - timedelta(days=7), now=now),
        "keys": selectors.active_keys(user=user, now=now),
        "snippet_model": _snippet_model(profiles),
    }


@require_GET
async def home(request: HttpRequest) -> HttpResponseBase:
    user = await request.auser()
    request.user = user  # loaded once on the async side: templates read request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    context: dict[str, Any] = {"base_url": request.build_absolute_uri("/v1"), "live_every_s": LIVE_EVERY_S}
    if is_admin(user):
        fleet, page = await asyncio.gather(selectors.fleet(), sync_to_async(_admin_page)(user))
        context.update(page, fleet=fleet, is_admin=True, show_checklist=not page["checklist"].complete)
    else:
        context.update(await sync_to_async(_member_page)(user), is_admin=False)
    return render(request, "home/home.html", context)


async def home_live(request: HttpRequest) -> HttpResponseBase:
    """The dashboard's card bodies (and the checklist's ticks with `?checklist=1`), each an
    out-of-band swap. A poll after the session ended sends the browser to the login page."""
    user = await request.auser()
    request.user = user
    if not user.is_authenticated:
        if request.htmx:  # type: ignore[attr-defined]
            return HttpResponseClientRedirect(reverse("login") + "?next=/")
        return redirect_to_login(reverse("home"))
    if not is_admin(user):  # before the method: a member learns nothing of this URL
        raise PermissionDenied(DENIED)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    checklist = request.GET.get("checklist") == "1"
    fleet, data = await asyncio.gather(
        selectors.fleet(), sync_to_async(_dashboard)(user=user, checklist=checklist)
    )
    return render(request, "home/_live.html", {**data, "fleet": fleet})
