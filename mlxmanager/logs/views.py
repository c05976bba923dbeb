"""The Logs page (admins): the tail of every process's log file, filtered, live over SSE; and
the debug report's download."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from inference import encoders
from mlxmanager.errors import DomainError
from mlxmanager.logs import report, selectors
from mlxmanager.permissions import admin_required, admin_stream

RECORDS_PARTIAL = "logs/logs.html#records"
EVENT_EVERY_S = 1.0  # how often the files are looked at
KEEPALIVE_S = 15.0
STREAM_MAX_S = 30 * 60.0  # then the browser's EventSource reconnects


def _filters(params: Mapping[str, str], known: list[str]) -> tuple[selectors.LogFilter, str]:
    try:
        return selectors.parse_filter(params, known), ""
    except DomainError as exc:
        return selectors.LogFilter(), exc.message


def _read(filters: selectors.LogFilter) -> list[selectors.Record]:
    return selectors.records(filters)


@admin_required
@require_GET
def logs_page(request: HttpRequest) -> HttpResponse:
    known = selectors.processes()
    filters, error = _filters(request.GET, known)
    context = {
        "records": _read(filters),
        "filters": filters,
        "error": error,
        "processes": known,
        "levels": selectors.LEVELS,
        "query": urlencode(filters.query()),
        "log_dir": selectors.log_dir(),
    }
    template = RECORDS_PARTIAL if request.htmx else "logs/logs.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=400 if error else 200)


@admin_stream
@require_GET
async def logs_events(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Server-sent events: the records partial, re-rendered when a file changes (looked at every
    EVENT_EVERY_S), a keep-alive comment otherwise, until the client leaves."""
    known = await sync_to_async(selectors.processes, thread_sensitive=False)()
    filters, error = _filters(request.GET, known)
    if error:
        return HttpResponse(error, status=400, content_type="text/plain")

    async def stream() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + STREAM_MAX_S
        yield encoders.retry_frame(3000)
        seen: object = None
        last = time.monotonic()
        # A client disconnect cancels this generator at its next await: nothing else to stop.
        while time.monotonic() < deadline:
            now = time.monotonic()
            signature = await sync_to_async(selectors.signature, thread_sensitive=False)()
            if signature != seen:
                seen = signature
                found = await sync_to_async(_read, thread_sensitive=False)(filters)
                html = render_to_string(
                    RECORDS_PARTIAL, {"records": found, "filters": filters}, request=request
                )
                yield encoders.html_frame("logs", html)
                last = now
            elif now - last >= KEEPALIVE_S:
                yield encoders.KEEPALIVE
                last = now
            await asyncio.sleep(EVENT_EVERY_S)

    return encoders.event_stream(stream())


@admin_required
@require_POST
async def debug_report(request: HttpRequest) -> HttpResponse:
    name, data = await report.build()
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response
