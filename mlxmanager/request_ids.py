"""Request ids, end to end: `X-Request-ID` on every `/v1` and `/api` response.

A client's own id is kept when it is a sane token (up to 128 of `A-Za-z0-9._:-`), otherwise
one is made. The id goes into error bodies (`request_id`), the audit row, log lines (the
`request_id` log record attribute, via `RequestIdFilter`), the worker request and the
upstream call (`x-request-id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

HEADER = "X-Request-ID"
PREFIXES = ("/v1/", "/api/")
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_current: ContextVar[str] = ContextVar("mlxm_request_id", default="")


def new() -> str:
    """32 random hex digits (as `uuid.uuid4().hex` reads, without building a UUID per request)."""
    return os.urandom(16).hex()


def of(request: HttpRequest) -> str:
    """The request's id (made now if the middleware did not run)."""
    rid = getattr(request, "request_id", "")
    if not rid:
        rid = request.request_id = _from_client(request) or new()  # type: ignore[attr-defined]
    return rid  # type: ignore[no-any-return]


def current() -> str:
    return _current.get()


def _from_client(request: HttpRequest) -> str:
    value = request.META.get("HTTP_X_REQUEST_ID", "")
    return value if _VALID.fullmatch(value) else ""


@contextlib.contextmanager
def bound(rid: str) -> Any:
    token = _current.set(rid)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record ("-" outside a request). Django's own "4xx/5xx on
    /path" lines (`django.request`) are written after the middleware has let go of the id: they
    carry the request, whose id is used."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = _current.get() or getattr(getattr(record, "request", None), "request_id", "")
            record.request_id = rid if isinstance(rid, str) and rid else "-"
        return True


@sync_and_async_middleware
def request_id_middleware(get_response: Any) -> Any:
    def wanted(request: HttpRequest) -> bool:
        return request.path_info.startswith(PREFIXES)

    def finish(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response[HEADER] = request.request_id  # type: ignore[attr-defined]
        return response

    if asyncio.iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            if not wanted(request):
                return await get_response(request)  # type: ignore[no-any-return]
            with bound(of(request)):
                return finish(request, await get_response(request))

        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        if not wanted(request):
            return get_response(request)  # type: ignore[no-any-return]
        with bound(of(request)):
            return finish(request, get_response(request))

    return sync_middleware
