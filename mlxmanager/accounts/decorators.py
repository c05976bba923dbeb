"""`admin_required`: pages only admins (`is_staff`) may open; members get a 403 page."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase

DENIED = "Only admins can open this page."


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Anonymous visitors go to the login page; logged-in members get a 403. Sync or async views."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            user = await request.auser()
            # Loaded once on the async side: templates read request.user, which would query.
            request.user = user
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user.is_staff:
                raise PermissionDenied(DENIED)
            response: HttpResponseBase = await view(request, *args, **kwargs)
            return response

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied(DENIED)
        response: HttpResponseBase = view(request, *args, **kwargs)
        return response

    return wrapper
