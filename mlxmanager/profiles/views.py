"""Profile pages: the list (everyone), create / edit / delete (admins). Services do the work."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from mlxmanager.errors import DomainError, NotFound
from mlxmanager.permissions import admin_required
from mlxmanager.profiles import selectors, services
from mlxmanager.profiles.forms import ProfileForm
from mlxmanager.profiles.models import Profile


def _get_or_404(pk: int) -> Profile:
    try:
        return selectors.profile_get(pk=pk)
    except NotFound as exc:
        raise Http404(exc.message) from exc


@login_required
def profile_list(request: HttpRequest) -> HttpResponse:
    profiles = list(selectors.profile_list())
    template = "profiles/list.html#profiles-table" if request.htmx else "profiles/list.html"  # type: ignore[attr-defined]
    return render(request, template, {"profiles": profiles})


def _form_page(request: HttpRequest, profile: Profile | None) -> HttpResponse:
    profiles = list(selectors.profile_list())
    local = selectors.local_model_dirs(profiles=profiles)
    status = 200
    if request.method == "POST":
        form = ProfileForm(request.POST, local_models=local)
        if form.is_valid():
            try:
                if profile is None:
                    values = form.service_values()
                    profile = services.profile_create(**values)
                    messages.success(request, f"Created profile {profile.name}.")
                else:
                    profile = services.profile_update(profile=profile, **form.service_values())
                    messages.success(request, f"Saved profile {profile.name}.")
                return redirect("profiles")
            except DomainError as exc:
                form.add_service_error(exc.param, exc.message)
        status = 400
    else:
        initial: dict[str, Any] | None
        if profile is not None:
            initial = ProfileForm.initial_for(profile, {m.path for m in local})
        else:  # "Create profile" from a local model, a download or a folder: ?path=<dir>
            initial = selectors.profile_suggestion(path=request.GET.get("path", "")) or None
        form = ProfileForm(initial=initial, local_models=local)
    context = {"form": form, "profile": profile, "local_models": local}
    return render(request, "profiles/form.html", context, status=status)


@admin_required
@require_http_methods(["GET", "POST"])
def profile_create(request: HttpRequest) -> HttpResponse:
    return _form_page(request, None)


@admin_required
@require_http_methods(["GET", "POST"])
def profile_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _form_page(request, _get_or_404(pk))


@admin_required
@require_http_methods(["GET", "POST"])
def profile_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET asks for confirmation (the no-JavaScript path); POST deletes."""
    profile = _get_or_404(pk)
    if request.method == "GET":
        return render(request, "profiles/confirm_delete.html", {"profile": profile})
    services.profile_delete(profile=profile)
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request, "profiles/list.html#profiles-table", {"profiles": list(selectors.profile_list())}
        )
    messages.success(request, f"Deleted profile {profile.name}.")
    return redirect("profiles")
