"""Security headers Django 5.2 does not set itself: a Content-Security-Policy on pages.

Pages load only our own scripts (no inline script, no eval: htmx and our JS files are
served from /static/), styles from /static/ plus inline `style` attributes (htmx's
indicator styles and progress bars), images from ourselves and data: URLs, and connect
(fetch, EventSource, WebSocket) back to the same origin. The generated API docs page
(/api/docs) is no exception: django-ninja serves Swagger UI from /static/ninja/ with no
inline script (its settings are a JSON data block).
"""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


def _apply(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    if "Content-Security-Policy" not in response and response.get("Content-Type", "").startswith("text/html"):
        response["Content-Security-Policy"] = POLICY
    return response


def content_security_policy(get_response: Callable) -> Callable:  # type: ignore[type-arg]
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            return _apply(request, await get_response(request))

        markcoroutinefunction(middleware)
        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        return _apply(request, get_response(request))

    return sync_middleware


content_security_policy.sync_capable = True  # type: ignore[attr-defined]
content_security_policy.async_capable = True  # type: ignore[attr-defined]
