"""Admin-only gates for pages and the management API (staff users are admins)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponseForbidden
from django.http.response import HttpResponseBase

from mlxmanager.errors import PermissionDenied


def is_admin(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def admin_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Log in first (redirect), then 403 for members."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_admin(request.user):
            return HttpResponseForbidden("Only admins can see this page.")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def require_admin(request: HttpRequest) -> None:
    """For ninja routes (already session-authenticated): members get a 403 problem."""
    if not is_admin(request.user):
        raise PermissionDenied("only admins can do this")
