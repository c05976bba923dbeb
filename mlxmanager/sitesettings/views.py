"""The Settings page (admins) and the Connect page (everyone signed in)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from mlxmanager.accounts import selectors as keys_selectors
from mlxmanager.accounts import services as keys_services
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required
from mlxmanager.sitesettings import connect as snippets
from mlxmanager.sitesettings import selectors, services
from mlxmanager.sitesettings.registry import APPLIES, BY_KEY, SPECS, shown


def _fields(posted: dict[str, Any] | None, errors: dict[str, str]) -> list[dict[str, Any]]:
    rows = {r["key"]: r for r in selectors.rows()}
    out = []
    for spec in SPECS:
        row = rows[spec.key]
        if posted is not None and spec.key in posted:
            text = posted[spec.key]
        else:
            text = "" if spec.secret or row["source"] != "database" else shown(spec, row["value"])
        out.append({**row, "spec": spec, "text": text, "placeholder": _placeholder(spec, row),
                    "applies_label": APPLIES[spec.applies], "error": errors.get(spec.key)})  # fmt: skip
    return out


def _placeholder(spec: Any, row: dict[str, Any]) -> str:
    if spec.secret:
        return "set (leave blank to keep)" if row["source"] != "unset" else "not set"
    default = row["default"]
    if default in (None, "", [], {}):
        return "default: none"
    return "default: " + shown(spec, default).replace("\n", "; ")


@admin_required
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    errors: dict[str, str] = {}
    result = None
    posted = None
    if request.method == "POST":
        posted = {k: request.POST.get(k, "") for k in BY_KEY}
        values: dict[str, Any] = {k: v for k, v in posted.items() if not BY_KEY[k].secret}
        if request.POST.get("hf_token_clear"):
            values["hf_token"] = None
        elif posted["hf_token"].strip():
            values["hf_token"] = posted["hf_token"]
        posted["hf_token"] = ""
        try:
            result = services.settings_update(values=values, user=request.user)
            posted = None
        except DomainError as exc:
            errors = getattr(exc, "errors", None) or {exc.param or "": exc.message}
    context = {
        "fields": _fields(posted, errors),
        "errors": errors,
        "result": result,
        "changed_labels": [(BY_KEY[k].label, result["applied"][k]) for k in result["changed"]]
        if result
        else [],
    }
    return render(request, "sitesettings/settings.html", context, status=400 if errors else 200)


def base_url(request: HttpRequest) -> str:
    """The server's address as clients reach it: MLXM_PUBLIC_URL, else this request's."""
    public = str(getattr(settings, "MLXM_PUBLIC_URL", "") or "").rstrip("/")
    return public or request.build_absolute_uri("/").rstrip("/")


@login_required
@require_http_methods(["GET", "POST"])
def connect(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    keys = [k for k in keys_selectors.api_key_list(user=user) if k.is_active(now=timezone.now())]
    created_secret = error = None
    chosen = None
    if request.method == "POST":
        try:
            key, created_secret = keys_services.api_key_create(
                user=user, name=request.POST.get("name", ""), expires_at=None, allowed_models=[],
                rpm_limit=None, tokens_per_day=None,
            )  # fmt: skip
            chosen = key
            keys = [key, *keys]
        except DomainError as exc:
            error = exc.message
    else:
        wanted = request.GET.get("key", "")
        chosen = next((k for k in keys if str(k.pk) == wanted), keys[0] if keys else None)
    if created_secret:
        key_text = created_secret
    elif chosen is not None:
        key_text = f"{chosen.prefix}…(your key {chosen.name})"
    else:
        key_text = "YOUR_API_KEY"
    root = base_url(request)
    context = {
        "keys": keys,
        "chosen": chosen,
        "created_secret": created_secret,
        "error": error,
        "root": root,
        "snippets": snippets.build(root=root, key=key_text, model=snippets.default_model()),
    }
    return render(request, "sitesettings/connect.html", context, status=400 if error else 200)
