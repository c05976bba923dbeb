"""Pages: start and finish an SSO sign-in, and the SSO settings page (admins)."""

from __future__ import annotations

import logging

from django.conf import settings as django_settings
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required
from mlxmanager.sso import selectors, services

log = logging.getLogger(__name__)
NEXT_KEY = "mlxm_sso_next"


def _refused(request: HttpRequest, exc: services.SsoRefused) -> HttpResponse:
    log.warning("SSO sign-in refused: %s", exc.message)
    context = {"message": exc.message, "provider_name": selectors.current().provider_name}
    return render(request, "sso/refused.html", context, status=exc.status)


@never_cache
@require_GET
def sso_login(request: HttpRequest) -> HttpResponse:
    """Send the browser to the provider; `?next=` is where to land afterwards."""
    next_url = request.GET.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        request.session[NEXT_KEY] = next_url
    else:
        request.session.pop(NEXT_KEY, None)
    try:
        return services.begin(request, request.build_absolute_uri(reverse("sso-callback")))
    except services.SsoRefused as exc:
        return _refused(request, exc)


@never_cache
@require_GET
def sso_callback(request: HttpRequest) -> HttpResponse:
    """The provider's redirect back (the redirect URI to register at the provider)."""
    try:
        user = services.finish(request)
    except services.SsoRefused as exc:
        return _refused(request, exc)
    next_url = request.session.pop(NEXT_KEY, None) or reverse(django_settings.LOGIN_REDIRECT_URL)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect(next_url)


@admin_required
@require_http_methods(["GET", "POST"])
def sso_settings(request: HttpRequest) -> HttpResponse:
    current = selectors.current()
    error = notice = None
    errors: dict[str, str] = {}
    form = {
        "enabled": current.enabled,
        "provider_name": current.provider_name,
        "issuer": current.issuer,
        "client_id": current.client_id,
        "allowed_domains": ", ".join(current.allowed_domains),
        "groups_claim": current.groups_claim,
        "admin_group": current.admin_group,
        "password_login": current.password_login,
    }
    if request.method == "POST":
        post = request.POST
        form = {
            "enabled": post.get("enabled") == "on",
            "provider_name": post.get("provider_name", ""),
            "issuer": post.get("issuer", ""),
            "client_id": post.get("client_id", ""),
            "allowed_domains": post.get("allowed_domains", ""),
            "groups_claim": post.get("groups_claim", ""),
            "admin_group": post.get("admin_group", ""),
            "password_login": post.get("password_login", "all"),
        }
        try:
            services.config_save(user=request.user, client_secret=post.get("client_secret", ""), **form)  # type: ignore[arg-type]
            notice = "Saved. The login page now follows these settings."
            current = selectors.current()
        except DomainError as exc:
            error = exc.message
            if exc.param:
                errors[exc.param] = exc.message
    context = {
        "form": form,
        "current": current,
        "error": error,
        "errors": errors,
        "notice": notice,
        "has_secret": bool(current.client_secret),
        "redirect_uri": request.build_absolute_uri(reverse("sso-callback")),
    }
    return render(request, "sso/settings.html", context, status=400 if error else 200)
