"""Pages: change your own password; set a new one from an admin's one-time reset link."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from mlxmanager.accounts import passwords


@sensitive_post_parameters()
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def password_change(request: HttpRequest) -> HttpResponse:
    """The current password, then the new one twice; Django's validators (with the user, so an
    admin's 12-character minimum applies). Other sessions of the user end; this one stays."""
    forced = bool(request.session.get(passwords.SESSION_FLAG))
    done = False
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        update_session_auth_hash(request, user)
        passwords.changed(user)
        request.session.pop(passwords.SESSION_FLAG, None)
        done, forced = True, False
        form = PasswordChangeForm(request.user)
    status = 400 if request.method == "POST" and not done else 200
    return render(
        request,
        "accounts/password_change.html",
        {"form": form, "done": done, "forced": forced},
        status=status,
    )


class ResetConfirm(auth_views.PasswordResetConfirmView):
    """Django's view (the token is one-time: it stops matching once the password changes);
    setting the password also clears a pending "must change"."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password-reset-complete")

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        passwords.changed(form.user)
        return response

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        response.status_code = 400
        return response


reset_confirm = ResetConfirm.as_view()
reset_complete = auth_views.PasswordResetCompleteView.as_view(
    template_name="accounts/password_reset_complete.html"
)
