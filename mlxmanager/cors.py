"""CORS for browser-based clients of the `/v1` gateway, off unless `MLXM_CORS_ORIGINS` is set.

`MLXM_CORS_ORIGINS` is a comma-separated list of origins (`https://app.example.com`) or `*`.
Only `/v1/` answers get CORS headers: pages and `/api` (session cookies, CSRF) never do, so
no other site's script can read them. A preflight (`OPTIONS` with
`Access-Control-Request-Method`) from an allowed origin is answered here, before auth.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

PREFIX = "/v1/"
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = ("authorization, content-type, x-api-key, anthropic-version, anthropic-beta, "
                   "anthropic-dangerous-direct-browser-access, x-request-id, x-stainless-arch, x-stainless-lang, "
                   "x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
                   "x-stainless-runtime-version, x-stainless-timeout")  # fmt: skip
EXPOSED_HEADERS = "X-Request-ID, Retry-After"
MAX_AGE_S = 600


def allowed_origin(request: HttpRequest) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when CORS doesn't apply."""
    if not request.path_info.startswith(PREFIX):
        return None
    origin = request.META.get("HTTP_ORIGIN", "")
    if not origin:  # SDKs and servers send none: no settings lookup on their requests
        return None
    from mlxmanager.sitesettings.selectors import value

    origins = tuple(value("cors_origins") or ())  # the Settings page's, else MLXM_CORS_ORIGINS
    if not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def _preflight(request: HttpRequest, origin: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response["Access-Control-Max-Age"] = str(MAX_AGE_S)
    return response


def _decorate(response: HttpResponseBase, origin: str) -> HttpResponseBase:
    response["Access-Control-Allow-Origin"] = origin
    response["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if origin != "*":
        response["Vary"] = "Origin"
    return response


def _is_preflight(request: HttpRequest) -> bool:
    return request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META


@sync_and_async_middleware
def cors_middleware(get_response: Any) -> Any:
    if asyncio.iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            origin = allowed_origin(request)
            if origin is None:
                return await get_response(request)  # type: ignore[no-any-return]
            if _is_preflight(request):
                return _decorate(_preflight(request, origin), origin)
            return _decorate(await get_response(request), origin)

        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        origin = allowed_origin(request)
        if origin is None:
            return get_response(request)  # type: ignore[no-any-return]
        if _is_preflight(request):
            return _decorate(_preflight(request, origin), origin)
        return _decorate(get_response(request), origin)

    return sync_middleware
