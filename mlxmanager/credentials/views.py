"""The credentials page (admin). Secrets are write-only: forms take them, pages never show them."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from mlxmanager.credentials import selectors, services
from mlxmanager.credentials.models import Credential
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required


def _panel(
    request: HttpRequest, *, error: str | None = None, notice: str | None = None, status: int = 200
) -> HttpResponse:
    context = {
        "credentials": list(selectors.credential_list()),
        "providers": Credential.Provider.choices,
        "error": error,
        "notice": notice,
        "form": request.POST if error else {},
    }
    template = "credentials/credentials.html#panel" if request.htmx else "credentials/credentials.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=status)


@admin_required
@require_http_methods(["GET", "POST"])
def credentials(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            cred = services.credential_create(
                name=request.POST.get("name", ""),
                provider=request.POST.get("provider", ""),
                base_url=request.POST.get("base_url", ""),
                secret=request.POST.get("secret", ""),
                user=request.user,
            )
        except DomainError as exc:
            return _panel(request, error=exc.message, status=400)
        return _panel(
            request, notice=f"Saved '{cred.name}'. Its secret is stored encrypted and won't be shown again."
        )
    return _panel(request)


def _act(request: HttpRequest, fn: object) -> HttpResponse:
    try:
        notice = fn()  # type: ignore[operator]
    except DomainError as exc:
        if request.htmx:  # type: ignore[attr-defined]
            return _panel(request, error=exc.message, status=400)
        return HttpResponse(exc.message, status=exc.status)
    if request.htmx:  # type: ignore[attr-defined]
        return _panel(request, notice=notice)
    return redirect("credentials")


@admin_required
@require_POST
def credential_test(request: HttpRequest, credential_id: int) -> HttpResponse:
    try:
        cred = services.credential_test(credential_id=credential_id, user=request.user)
    except DomainError as exc:
        if request.htmx:  # type: ignore[attr-defined]
            return _panel(request, error=exc.message, status=400)
        return HttpResponse(exc.message, status=exc.status)
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect("credentials")
    # A failed test is the answer the admin asked for: shown as an error, in a 200 (htmx swaps it).
    if not cred.last_test_ok:
        return _panel(request, error=f"The test of '{cred.name}' failed: {cred.last_test_message}.")
    return _panel(request, notice=f"'{cred.name}' works: {cred.last_test_message}.")


@admin_required
@require_POST
def credential_secret(request: HttpRequest, credential_id: int) -> HttpResponse:
    def run() -> str:
        cred = services.credential_update(
            credential_id=credential_id, secret=request.POST.get("secret", ""), user=request.user
        )
        return f"Replaced the secret of '{cred.name}'."

    return _act(request, run)


@admin_required
@require_POST
def credential_toggle(request: HttpRequest, credential_id: int) -> HttpResponse:
    def run() -> str:
        cred = services.credential_update(
            credential_id=credential_id, enabled=request.POST.get("enabled") == "1", user=request.user
        )
        return f"'{cred.name}' is {'enabled' if cred.enabled else 'disabled'}."

    return _act(request, run)


@admin_required
@require_POST
def credential_delete(request: HttpRequest, credential_id: int) -> HttpResponse:
    def run() -> str:
        services.credential_delete(credential_id=credential_id, user=request.user)
        return "Deleted."

    return _act(request, run)
