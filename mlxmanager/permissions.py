"""The one admin gate: pages (sync or async views), the management API and WebSockets.

Admins are staff users. Anonymous visitors of a page go to the login page; logged-in members
get the 403 page; API callers get a 403 problem.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied as PageDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from ninja.security import HttpBearer, SessionAuth

from mlxmanager.errors import DomainError, PermissionDenied

DENIED = "Only admins can open this page."


def is_admin(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
    )


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a page view, sync or async."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            user = await request.auser()
            # Loaded once on the async side: templates read request.user, which would query.
            request.user = user
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not is_admin(user):
                raise PageDenied(DENIED)
            response: HttpResponseBase = await view(request, *args, **kwargs)
            return response

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_admin(request.user):
            raise PageDenied(DENIED)
        response: HttpResponseBase = view(request, *args, **kwargs)
        return response

    return wrapper


def admin_stream(view: Callable[..., Any]) -> Callable[..., Any]:
    """`admin_required` for an event stream (an async view): the session as for any page, or a
    stream token in `?token=` (purpose "sse", `POST /api/tokens/stream?purpose=sse`), since
    EventSource cannot send headers. A token sent is a token checked: a bad, expired or revoked
    one (or one of an inactive user) is a 401 even when a session cookie came along; a valid
    one of a member is the 403 page. Without a token, the session decides, as before."""
    if not iscoroutinefunction(view):
        raise TypeError("admin_stream decorates async views")
    by_session = admin_required(view)

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        token = request.GET.get("token")
        if not token:
            return await by_session(request, *args, **kwargs)  # type: ignore[no-any-return]
        from mlxmanager.accounts.tokens import STREAM_PURPOSE, token_user

        user = await token_user(token, purpose=STREAM_PURPOSE)
        if user is None:
            return HttpResponse("Invalid or expired stream token.", status=401, content_type="text/plain")
        if not is_admin(user):
            raise PageDenied(DENIED)
        request.user = user
        response: HttpResponseBase = await view(request, *args, **kwargs)
        return response

    return wrapper


def require_admin(request: HttpRequest, what: str = "do this") -> None:
    """For ninja routes (session-authenticated): members get a 403 problem.

    Reads the user django_auth put in `request.auth` when there is one, so async operations
    don't query through `request.user`.
    """
    user = getattr(request, "auth", None) or getattr(request, "user", None)
    if not is_admin(user):
        raise PermissionDenied(f"only admins can {what}")


class AdminSessionAuth(SessionAuth):
    """Session auth for admin-only API routes. Ninja runs it before it reads the body or the
    query, so a member gets the 403 whatever they send (not a 400 that reveals the schema)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        if user is not None and not is_admin(user):
            raise PermissionDenied(f"only admins can {self.what}")
        return user


class NotAuthenticated(DomainError):
    status = 401
    code = "unauthorized"


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AdminTokenAuth(HttpBearer):
    """`Authorization: Bearer mlxa-…` on /api: an admin token (mlxmanager/accounts/models.py
    AdminToken) acting as the admin who made it. No CSRF (no cookie is involved). A token sent
    is a token checked: a bad, expired or revoked one is a 401 problem even when a session
    cookie came along; a `read` token on anything but GET/HEAD is a 403. Every use is audited
    (an "Admin token used" entry), and the changes it makes name the token (`via_token`)."""

    def __init__(self, what: str = "do this") -> None:
        super().__init__()
        self.what = what

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        from mlxmanager.accounts.models import AdminToken
        from mlxmanager.accounts.services import admin_token_authenticate
        from mlxmanager.audit import signals
        from mlxmanager.audit.services import log_action

        found = admin_token_authenticate(token.strip())
        if found is None:
            raise NotAuthenticated(
                "Invalid, expired or revoked admin token (API keys for /v1 don't work on /api)."
            )
        user = found.created_by
        request.user = user
        signals.set_actor(user)
        signals.set_via(str(found))
        refused = found.scope != AdminToken.SCOPE_WRITE and request.method not in SAFE_METHODS
        log_action(
            found,
            "mlxmanager.admintoken.used",
            user=user,
            object_type="admintoken",
            data={
                "method": request.method,
                "path": request.path[:200],
                **({"refused": "read-only"} if refused else {}),
            },
        )
        if refused:
            raise PermissionDenied(f"this admin token is read-only; a write token is needed to {self.what}")
        return user


def admin_auth(what: str) -> list[Any]:
    """Auth for an admin-only router or operation: an admin token, else the admin's session."""
    return [AdminTokenAuth(what), AdminSessionAuth(what)]
