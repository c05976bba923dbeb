"""The Workers page (admins): the embedded worker and the ones on other machines, each
health-checked when the page is drawn; register, switch off or remove a remote worker."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required
from mlxmanager.workers import services
from mlxmanager.workers.selectors import all_workers
from mlxmanager.workers.selectors import worker_check as check

TEMPLATE = "workers/workers.html"


async def _panel(request: HttpRequest, *, error: str = "", notice: str = "", form: Any = None,
                 status: int = 200) -> HttpResponse:  # fmt: skip
    workers = await sync_to_async(all_workers)()
    checks = await asyncio.gather(
        check(settings.MLXM_WORKER_SOCKET), *(check(w.address) for w in workers if w.enabled)
    )
    enabled = iter(checks[1:])
    rows = [{"worker": w, "health": next(enabled) if w.enabled else None} for w in workers]
    context = {"embedded": checks[0], "rows": rows, "error": error, "notice": notice, "form": form or {},
               "has_secret": bool(settings.MLXM_WORKER_SECRET)}  # fmt: skip
    template = f"{TEMPLATE}#panel" if request.htmx else TEMPLATE  # type: ignore[attr-defined]
    return render(request, template, context, status=status)


@admin_required
@require_http_methods(["GET", "POST"])
async def workers(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return await _panel(request)
    form = {"name": request.POST.get("name", ""), "address": request.POST.get("address", "")}
    try:
        worker = await sync_to_async(services.worker_create)(**form)
    except DomainError as exc:
        return await _panel(request, error=exc.message, form=form, status=200 if request.htmx else exc.status)  # type: ignore[attr-defined]
    return await _panel(request, notice=f"Registered {worker.name}.")


async def _act(request: HttpRequest, worker_id: int, change: Any) -> HttpResponse:
    """Apply `change(worker) -> notice` to one worker and redraw the panel."""
    try:
        worker = await sync_to_async(services.worker_get)(worker_id)
        notice = await sync_to_async(change)(worker)
    except DomainError as exc:
        return await _panel(request, error=exc.message, status=200 if request.htmx else exc.status)  # type: ignore[attr-defined]
    return await _panel(request, notice=notice)


@admin_required
@require_POST
async def worker_toggle(request: HttpRequest, worker_id: int) -> HttpResponse:
    enabled = request.POST.get("enabled") == "1"

    def change(worker: Any) -> str:
        services.worker_set_enabled(worker=worker, enabled=enabled)
        return f"{worker.name} {'enabled' if enabled else 'disabled'}."

    return await _act(request, worker_id, change)


@admin_required
@require_POST
async def worker_delete(request: HttpRequest, worker_id: int) -> HttpResponse:
    def change(worker: Any) -> str:
        services.worker_delete(worker=worker)
        return f"Removed {worker.name}."

    return await _act(request, worker_id, change)
