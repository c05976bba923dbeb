"""The audit page (admin): filters, keyset pages, totals, chart, export; live tail over WS."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode

from mlxmanager.audit import selectors
from mlxmanager.audit.services import ACTIONS, action_label
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
    if error:  # no rows rather than everyone's: the filters could not be read
        page = selectors.Page(rows=[])
    else:
        try:
            page = selectors.request_page(
                filters=filters, before=request.GET.get("before", ""), after=request.GET.get("after", "")
            )
        except DomainError as exc:
            page, error = selectors.request_page(filters=filters), exc.message
    query = filters.query()
    # The form shows what was typed, also when it was refused.
    raw = {
        k: (request.GET.get(k) or "").strip()[:256]
        for k in ("since", "until", "user", "model", "backend", "status")
    }
    form = raw if error else {**raw, **{k: query.get(k, "") for k in raw}}
    context = {
        "form": form,
        "page": page,
        "filters": filters,
        "error": error,
        "query": urlencode(query),
        "older_url": "?" + urlencode({**query, "before": page.older}) if page.older else None,
        "newer_url": "?" + urlencode({**query, "after": page.newer}) if page.newer else None,
        "status_choices": [("", "any"), ("ok", "ok"), ("error", "errors"), ("429", "429"), ("503", "503")],
    }
    # The filter form swaps #audit-results (totals, chart, export links and table together, so
    # all of them follow the filters); the pager swaps only the table.
    htmx = request.htmx  # type: ignore[attr-defined]
    if htmx and htmx.target == "audit-results":
        template = "audit/log.html#results"
    elif htmx:
        template = "audit/log.html#table"
    else:
        template = "audit/log.html"
    return render(request, template, context, status=400 if error else 200)


@admin_required
def summary(request: HttpRequest) -> HttpResponse:
    filters, error = _filters(request)
    if error:  # no totals for filters that could not be read (they would be everyone's)
        return render(request, "audit/log.html#summary", {"error": error}, status=400)
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
    """Admin changes, newest first, filtered by actor, object and action; diffs per field."""
    error = None
    try:
        filters = selectors.parse_action_filter(request.GET)
    except DomainError as exc:
        filters, error = selectors.ActionFilter(), exc.message
    before = request.GET.get("before", "")
    rows = (
        []
        if error
        else selectors.action_page(before=int(before) if before.isdigit() else None, filters=filters)
    )
    entries = [(a, action_label(a.action), selectors.field_changes(a.data, a.action)) for a in rows]
    query = filters.query()
    older = rows[-1].id if len(rows) == 50 else None
    context = {
        "entries": entries,
        "filters": filters,
        "error": error,
        "older_url": "?" + urlencode({**query, "before": str(older)}) if older else None,
        "actors": selectors.action_actors(),
        "object_types": selectors.action_object_types(),
        "action_choices": sorted(ACTIONS.items(), key=lambda kv: kv[1]),
    }
    return render(request, "audit/actions.html", context, status=400 if error else 200)


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
