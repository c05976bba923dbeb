"""The pool page (admins): what the worker holds, load/unload/pin buttons, live updates over SSE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST

from inference import encoders
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required, admin_stream
from mlxmanager.pool import services
from mlxmanager.pool.selectors import PoolState, pool_state

LIVE_PARTIAL = "pool/pool.html#pool-live"
EVENT_EVERY_S = 2.0
# A stream ends after this long; the browser's EventSource reconnects on its own.
STREAM_MAX_S = 30 * 60.0


def _context(state: PoolState, *, message: str = "", error: str = "") -> dict[str, object]:
    return {"state": state, "message": message, "error": error}


@admin_required
@require_GET
async def pool_page(request: HttpRequest) -> HttpResponse:
    state = await pool_state()
    template = LIVE_PARTIAL if request.htmx else "pool/pool.html"  # type: ignore[attr-defined]
    return render(request, template, _context(state))


@admin_required
@require_POST
async def pool_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    message = error = ""
    status = 200
    try:
        message = await services.pool_action(profile_name=name, action=action)
    except DomainError as exc:
        error, status = exc.message, exc.status
    state = await pool_state()
    if request.htmx:  # type: ignore[attr-defined]
        # The refusal is the answer the admin needs, so htmx gets it as a normal swap.
        return render(request, "pool/pool.html#pool-action", _context(state, message=message, error=error))
    return render(request, "pool/pool.html", _context(state, message=message, error=error), status=status)


@admin_stream
@require_GET
async def pool_events(request: HttpRequest) -> StreamingHttpResponse:
    """Server-sent events: the live partial, re-rendered every EVENT_EVERY_S, until the client leaves.
    Opened with the session or a stream token (`?token=`, purpose "sse")."""

    async def stream() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + STREAM_MAX_S
        yield encoders.retry_frame(3000)
        # A client disconnect cancels this generator at its next await: nothing else to stop.
        while time.monotonic() < deadline:
            state = await pool_state()
            yield encoders.html_frame(
                "pool", render_to_string(LIVE_PARTIAL, _context(state), request=request)
            )
            await asyncio.sleep(EVENT_EVERY_S)

    return encoders.event_stream(stream())
