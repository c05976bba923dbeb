"""Someone signed in with a temporary password goes to the password page first.

The flag lives in the session (set at sign-in from PasswordChangeRequired, dropped when they
choose a password), so other requests cost no query. Pages redirect there; /api answers 403 in
RFC 7807 shape; signing out, the password pages and static files stay reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from mlxmanager.accounts.passwords import SESSION_FLAG

_OPEN = ("/static/", "/password/reset/", "/logout/", "/login/")


def password_change_required(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    def middleware(request: HttpRequest) -> Any:
        session = getattr(request, "session", None)
        if session is None or not session.get(SESSION_FLAG):
            return get_response(request)
        if not request.user.is_authenticated:
            return get_response(request)
        target = reverse("password-change")
        path = request.path
        if path == target or path.startswith(_OPEN):
            return get_response(request)
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

    return middleware
