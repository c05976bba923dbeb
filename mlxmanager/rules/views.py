"""The routing page (admin): rules in the order they apply, reorder, the rule tester."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from mlxmanager.credentials.selectors import credential_list
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required
from mlxmanager.profiles.models import Profile
from mlxmanager.rules import selectors, services
from mlxmanager.rules.models import Rule


def _timeout(raw: str) -> float | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise DomainError("the timeout must be a number of seconds", param="timeout_s") from exc


def _panel(
    request: HttpRequest, *, error: str | None = None, notice: str | None = None, status: int = 200
) -> HttpResponse:
    context: dict[str, Any] = {
        "rules": selectors.rule_list(),
        "match_types": Rule.Match.choices,
        "credentials": list(credential_list()),
        "profiles": list(Profile.objects.filter(enabled=True).values_list("name", flat=True)),
        "error": error,
        "notice": notice,
        "form": request.POST if error else {},
    }
    template = "rules/rules.html#panel" if request.htmx else "rules/rules.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=status)


@admin_required
@require_http_methods(["GET", "POST"])
def rules(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            rule = services.rule_create(
                name=request.POST.get("name", ""),
                match_type=request.POST.get("match_type", "exact"),
                pattern=request.POST.get("pattern", ""),
                targets=services.parse_targets(request.POST.get("targets", "")),
                timeout_s=_timeout(request.POST.get("timeout_s", "")),
                user=request.user,
            )
        except DomainError as exc:
            return _panel(request, error=exc.message, status=400)
        return _panel(request, notice=f"Added rule '{rule.name}' (applied last; move it up to change that).")
    return _panel(request)


def _act(request: HttpRequest, fn: Any) -> HttpResponse:
    try:
        notice = fn()
    except DomainError as exc:
        if request.htmx:  # type: ignore[attr-defined]
            return _panel(request, error=exc.message, status=400)
        return HttpResponse(exc.message, status=exc.status)
    if request.htmx:  # type: ignore[attr-defined]
        return _panel(request, notice=notice)
    return redirect("rules")


@admin_required
@require_POST
def rule_move(request: HttpRequest, rule_id: int) -> HttpResponse:
    offset = -1 if request.POST.get("direction") == "up" else 1
    return _act(
        request, lambda: services.rule_move(rule_id=rule_id, offset=offset, user=request.user) and None
    )


@admin_required
@require_POST
def rule_order(request: HttpRequest) -> HttpResponse:
    """The order from the drag-and-drop list: `ids` in the new order."""
    try:
        ids = [int(x) for x in request.POST.getlist("ids")]
    except ValueError:
        ids = []
    return _act(request, lambda: services.rule_reorder(ids=ids, user=request.user) and None)


@admin_required
@require_POST
def rule_toggle(request: HttpRequest, rule_id: int) -> HttpResponse:
    enabled = request.POST.get("enabled") == "1"
    return _act(
        request, lambda: services.rule_update(rule_id=rule_id, enabled=enabled, user=request.user) and None
    )


@admin_required
@require_POST
def rule_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    return _act(request, lambda: services.rule_delete(rule_id=rule_id, user=request.user))


@admin_required
@require_GET
def rule_test(request: HttpRequest) -> HttpResponse:
    model = request.GET.get("model", "").strip()[:256]
    result = selectors.explain(model) if model else None
    template = "rules/rules.html#tester" if request.htmx else "rules/rules.html"  # type: ignore[attr-defined]
    if not request.htmx:  # type: ignore[attr-defined]
        return render(request, template, {**_panel_context(), "result": result, "tested": model})
    return render(request, template, {"result": result, "tested": model})


def _panel_context() -> dict[str, Any]:
    return {
        "rules": selectors.rule_list(),
        "match_types": Rule.Match.choices,
        "credentials": list(credential_list()),
        "profiles": list(Profile.objects.filter(enabled=True).values_list("name", flat=True)),
        "form": {},
    }


@admin_required
@require_http_methods(["GET", "POST"])
def rule_edit(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Change a rule's name, match, pattern, targets and timeout (the built-in one included)."""
    rule = Rule.objects.filter(pk=rule_id).first()
    if rule is None:
        return HttpResponse("No such rule.", status=404)
    error = None
    if request.method == "POST":
        try:
            services.rule_update(
                rule_id=rule.pk,
                user=request.user,
                name=request.POST.get("name", ""),
                match_type=request.POST.get("match_type", rule.match_type),
                pattern=request.POST.get("pattern", ""),
                targets=services.parse_targets(request.POST.get("targets", "")),
                timeout_s=_timeout(request.POST.get("timeout_s", "")),
            )
        except DomainError as exc:
            error = exc.message
        else:
            return redirect("rules")
    form = request.POST if error else {
        "name": rule.name,
        "match_type": rule.match_type,
        "pattern": rule.pattern,
        "timeout_s": "" if rule.timeout_s is None else f"{rule.timeout_s:g}",
        "targets": "\n".join(
            t.label if t.credential_id else f"local:{t.profile_name}"
            for t in rule.targets.select_related("credential")
        ),
    }  # fmt: skip
    context = {"rule": rule, "form": form, "error": error, "match_types": Rule.Match.choices,
               "profiles": list(Profile.objects.filter(enabled=True).values_list("name", flat=True)),
               "credentials": list(credential_list())}  # fmt: skip
    return render(request, "rules/rule_edit.html", context, status=400 if error else 200)
