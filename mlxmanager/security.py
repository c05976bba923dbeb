"""Security headers Django 5.2 does not set itself: a Content-Security-Policy on pages; and the
origin check of WebSocket handshakes (`SameOriginValidator`, below).

Pages load only our own scripts (no inline script, no eval: htmx and our JS files are
served from /static/), styles from /static/ plus inline `style` attributes (htmx's
indicator styles and progress bars), images from ourselves and data: URLs, audio and video
from ourselves and blob: URLs (the playground plays the speech it receives), and connect
(fetch, EventSource, WebSocket) back to the same origin. The generated API docs page
(/api/docs) is no exception: django-ninja serves Swagger UI from /static/ninja/ with no
inline script (its settings are a JSON data block).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.http.request import split_domain_port, validate_host

POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
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


# ---- WebSocket origins ---------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` as (scheme, host, port), the port defaulted; None if not one."""
    try:
        parts = urlsplit(value.strip())
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS[scheme]


def request_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin a same-origin page of this request has: the scheme (wss/https: https), and
    host and port from the Host header, which must be in ALLOWED_HOSTS (else None)."""
    host_header = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
    if host_header is None:
        return None
    domain, port = split_domain_port(host_header.decode("latin-1").lower())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    try:
        return scheme, domain.strip("[]"), int(port) if port else _DEFAULT_PORTS[scheme]
    except ValueError:
        return None


def _trusted(origin: Origin) -> bool:
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        scheme, _, netloc = pattern.lower().partition("://")
        wildcard = netloc.startswith("*.")
        trusted = parse_origin(f"{scheme}://{netloc[2:] if wildcard else netloc}")
        if trusted is None or (trusted[0], trusted[2]) != (origin[0], origin[2]):
            continue
        host_matches = origin[1].endswith("." + trusted[1]) if wildcard else origin[1] == trusted[1]
        if host_matches:
            return True
    return False


def websocket_origin_allowed(scope: dict[str, Any]) -> bool:
    """A browser opening one of our sockets from a page must be on our own origin: the same
    scheme, host and port as the request (its Host header, in ALLOWED_HOSTS), or an origin in
    CSRF_TRUSTED_ORIGINS (a proxy that rewrites Host; `*.` for subdomains, as Django's CSRF
    check). No Origin header: refused. No Host header (never from a browser, which always sends
    one; in-process callers such as channels' test communicator): the Origin's host must be in
    ALLOWED_HOSTS, as channels' AllowedHostsOriginValidator checks."""
    raw = next((v for k, v in scope.get("headers", ()) if k == b"origin"), None)
    origin = parse_origin(raw.decode("latin-1")) if raw is not None else None
    if origin is None:
        return False
    if _trusted(origin):
        return True
    if not any(k == b"host" for k, _ in scope.get("headers", ())):
        return validate_host(origin[1], settings.ALLOWED_HOSTS) or validate_host(
            f"[{origin[1]}]", settings.ALLOWED_HOSTS
        )
    return origin == request_origin(scope)


class SameOriginValidator:
    """ASGI middleware for WebSockets: refuses the handshake (403) unless
    `websocket_origin_allowed`. Settings are read per connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards WebSocket connections only")
        if websocket_origin_allowed(scope):
            await self.app(scope, receive, send)
            return
        from channels.security.websocket import WebsocketDenier

        await WebsocketDenier()(scope, receive, send)
