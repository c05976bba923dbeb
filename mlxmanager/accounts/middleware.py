"""Someone signed in with a temporary password goes to the password page first.

The flag lives in the session (set at sign-in from PasswordChangeRequired, dropped when they
choose a password), so other requests cost no query. Pages redirect there; /api answers 403 in
RFC 7807 shape; signing out, the password pages and static files stay reachable.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.decorators import sync_and_async_middleware

from mlxmanager.accounts.passwords import SESSION_FLAG

_OPEN = ("/static/", "/password/reset/", "/logout/", "/login/")


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """The answer for a flagged session's request: None lets it through."""
    target = reverse("password-change")
    path = request.path
    if path == target or path.startswith(_OPEN):
        return None
    if path.startswith("/api/"):
        return JsonResponse(
            {
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "detail": f"you signed in with a temporary password: choose your own at {target} first",
            },
            status=403,
            content_type="application/problem+json",
        )
    response: HttpResponse = redirect(target)
    if getattr(request, "htmx", False):
        response["HX-Redirect"] = target
    return response


@sync_and_async_middleware
def password_change_required(get_response: Any) -> Any:
    if asyncio.iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> Any:
            session = getattr(request, "session", None)
            if session is not None and await session.aget(SESSION_FLAG):
                user = await request.auser()
                if user.is_authenticated and (refused := _refusal(request)) is not None:
                    return refused
            return await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> Any:
        session = getattr(request, "session", None)
        if session is not None and session.get(SESSION_FLAG) and request.user.is_authenticated:
            refused = _refusal(request)
            if refused is not None:
                return refused
        return get_response(request)

    return middleware
