"""The usage page (admins: everyone; members: their own), its CSV, prices and budgets."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST

from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required
from mlxmanager.usage import selectors, services
from mlxmanager.usage.models import Budget, Price


def _scope(request: HttpRequest) -> int | None:
    return None if request.user.is_staff else request.user.pk


def _filters(request: HttpRequest) -> tuple[selectors.UsageFilter, str | None]:
    try:
        f = selectors.parse_filter(request.GET)
    except DomainError as exc:
        return selectors.UsageFilter(), exc.message
    if not request.user.is_staff:
        f.user = ""  # members see their own usage only
    return f, None


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    filters, error = _filters(request)
    rep = selectors.report(filters, user_id=_scope(request))
    context = {
        "rep": rep,
        "filters": filters,
        "error": error,
        "query": urlencode(filters.query()),
        "bars": selectors.chart(rep.series),
        "peak": max((r.tokens for r in rep.series), default=0),
        "groups": [("model", "model"), ("backend", "backend"), ("key", "API key"), ("user", "user")],
        "prices": Price.objects.all() if request.user.is_staff else [],
    }
    return render(request, "usage/usage.html", context, status=400 if error else 200)


@login_required
def export_csv(request: HttpRequest) -> HttpResponse:
    filters, error = _filters(request)
    if error:
        return HttpResponse(error, status=400, content_type="text/plain; charset=utf-8")
    rep = selectors.report(filters, user_id=_scope(request))
    response = HttpResponse(selectors.csv_text(rep), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{filters.period}-by-{filters.by}.csv"'
    return response


@admin_required
@require_POST
def prices(request: HttpRequest) -> HttpResponse:
    post = request.POST
    error = message = None
    try:
        if post.get("action") == "delete":
            services.delete_price(post.get("backend", ""), user=request.user)
            message = f"Removed the price of {post.get('backend', '')}."
        else:
            p = services.set_price(post.get("backend", ""), input_per_m=post.get("input_per_m") or 0,
                                   cached_per_m=post.get("cached_per_m") or 0,
                                   output_per_m=post.get("output_per_m") or 0, user=request.user)  # fmt: skip
            message = f"Saved the price of {p.backend}."
    except DomainError as exc:
        error = exc.message
    context = {"prices": Price.objects.all(), "error": error, "message": message, "form": post}
    return render(request, "usage/usage.html#prices", context, status=400 if error else 200)


def _owner(post: Any) -> dict[str, int]:
    from mlxmanager.accounts.models import ApiKey

    kind = post.get("owner", "")
    ref = (post.get("ref") or "").strip()
    if kind == "user":
        user = get_user_model().objects.filter(username=ref).first()
        if user is None:
            raise DomainError(f"no user '{ref}'", param="ref")
        return {"user_id": user.pk}
    if kind == "key":
        key = ApiKey.objects.filter(prefix=ref.rstrip("…")).first() if ref else None
        if key is None and ref.isdigit():
            key = ApiKey.objects.filter(pk=int(ref)).first()
        if key is None:
            raise DomainError(f"no API key with the prefix or id '{ref}'", param="ref")
        return {"api_key_id": key.pk}
    raise DomainError("owner must be user or key", param="owner")


@login_required
@require_http_methods(["GET", "POST"])
def budgets_page(request: HttpRequest) -> HttpResponse:
    error = message = None
    post = request.POST if request.method == "POST" else {}
    if request.method == "POST":
        if not request.user.is_staff:
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied("Only admins can change budgets.")
        try:
            b = services.set_budget(
                **_owner(post), tokens_per_day=post.get("tokens_per_day"),
                tokens_per_month=post.get("tokens_per_month"), spend_per_month=post.get("spend_per_month"),
                actor=request.user,
            )  # fmt: skip
            message = "Budget saved." if b is not None else "Budget removed."
            post = {}
        except DomainError as exc:
            error = exc.message
    qs = Budget.objects.select_related("user", "api_key", "api_key__user")
    if not request.user.is_staff:
        from django.db.models import Q

        qs = qs.filter(Q(user_id=request.user.pk) | Q(api_key__user_id=request.user.pk))
    context = {
        "budgets": list(qs),
        "lines": selectors.budget_lines(request.user),
        "error": error,
        "message": message,
        "form": post or request.GET,
    }
    return render(request, "usage/budgets.html", context, status=400 if error else 200)
