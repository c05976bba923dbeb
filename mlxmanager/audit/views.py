"""The audit page (admin): filters, keyset pages, totals, chart, export; live tail over WS."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode

from mlxmanager.audit import selectors
from mlxmanager.audit.services import action_label
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required


def _filters(request: HttpRequest) -> tuple[selectors.RequestFilter, str | None]:
    try:
        return selectors.parse_filter(request.GET), None
    except DomainError as exc:
        return selectors.RequestFilter(), exc.message


@admin_required
def log_page(request: HttpRequest) -> HttpResponse:
    filters, error = _filters(request)
    try:
        page = selectors.request_page(
            filters=filters, before=request.GET.get("before", ""), after=request.GET.get("after", "")
        )
    except DomainError as exc:
        page, error = selectors.request_page(filters=filters), exc.message
    query = filters.query()
    context = {
        "page": page,
        "filters": filters,
        "error": error,
        "query": urlencode(query),
        "older_url": "?" + urlencode({**query, "before": page.older}) if page.older else None,
        "newer_url": "?" + urlencode({**query, "after": page.newer}) if page.newer else None,
        "status_choices": [("", "any"), ("ok", "ok"), ("error", "errors"), ("429", "429"), ("503", "503")],
    }
    template = "audit/log.html#table" if request.htmx else "audit/log.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=400 if error else 200)


@admin_required
def summary(request: HttpRequest) -> HttpResponse:
    filters, error = _filters(request)
    window = selectors.summary_window(filters, now=timezone.now())
    bars, unit = selectors.timeline(window)
    by_model, by_user = selectors.totals(window)
    context = {
        "window": window,
        "by_model": by_model,
        "by_user": by_user,
        "bars": selectors.chart_svg_bars(bars),
        "unit": unit,
        "peak": max((b.requests for b in bars), default=0),
        "error": error,
    }
    return render(request, "audit/log.html#summary", context)


@admin_required
def actions(request: HttpRequest) -> HttpResponse:
    before = request.GET.get("before", "")
    rows = selectors.action_page(before=int(before) if before.isdigit() else None)
    entries = [(a, action_label(a.action)) for a in rows]
    older = rows[-1].id if len(rows) == 50 else None
    return render(request, "audit/actions.html", {"entries": entries, "older": older})


@admin_required
def export(request: HttpRequest, fmt: str) -> HttpResponse | StreamingHttpResponse:
    filters, error = _filters(request)
    if error:
        return HttpResponse(error, status=400)
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    response = StreamingHttpResponse(selectors.export_rows(filters, fmt), content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response
