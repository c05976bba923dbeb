"""Pages: API keys, users and the first admin (the home page is mlxmanager/home). Thin:
services and selectors do the work."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from mlxmanager.accounts import passwords, selectors, services, setup
from mlxmanager.errors import DomainError
from mlxmanager.permissions import admin_required


def _optional_int(value: str | None, param: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise DomainError(f"{param.replace('_', ' ')} must be a whole number", param=param) from exc


def _models_from(values: list[str]) -> list[str]:
    """Checkbox values (one name each) or a typed list (comma- or space-separated)."""
    return [m for value in values for m in value.replace(",", " ").split() if m]


def _keys_context(request: HttpRequest) -> dict[str, Any]:
    keys = list(selectors.api_key_list(user=request.user))  # type: ignore[arg-type]
    usage = services.key_usage([k.pk for k in keys])
    return {
        "keys": [(k, usage.get(k.pk, {})) for k in keys],
        "model_choices": services.allowed_model_choices(),
        "now": timezone.now(),
    }


@login_required
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest) -> HttpResponse:
    created_secret = None
    error = None
    if request.method == "POST":
        try:
            post = request.POST
            _, created_secret = services.api_key_create(
                user=request.user,  # type: ignore[arg-type]
                name=post.get("name", ""),
                expires_at=services.expiry_after(_optional_int(post.get("expires_days"), "expires_days")),
                allowed_models=_models_from(post.getlist("allowed_models")),
                rpm_limit=_optional_int(post.get("rpm_limit"), "rpm_limit"),
                tokens_per_day=_optional_int(post.get("tokens_per_day"), "tokens_per_day"),
            )
        except DomainError as exc:
            error = exc.message
    context = {
        **_keys_context(request),
        "created_secret": created_secret,
        "error": error,
        "base_url": request.build_absolute_uri("/v1"),
    }
    template = "accounts/keys.html#keys-panel" if request.htmx else "accounts/keys.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=400 if error else 200)


@login_required
@require_POST
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        services.api_key_revoke(user=request.user, key_id=key_id)  # type: ignore[arg-type]
    except DomainError as exc:
        return HttpResponse(exc.message, status=exc.status)
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "accounts/keys.html#keys-panel", _keys_context(request))
    return redirect("keys")


class LoginView(auth_views.LoginView):
    """Django's login page, plus the "Sign in with <provider>" button when SSO is on."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        from mlxmanager.sso.selectors import current

        return {**super().get_context_data(**kwargs), "sso": current()}


# --- the team's keys (admins) --------------------------------------------------------------


@admin_required
@require_GET
def team_keys(request: HttpRequest) -> HttpResponse:
    """Every user's keys, with usage today and this month; `?user=` filters by username."""
    return _team_page(request, error=None, message=None)


@admin_required
@require_POST
def team_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    error = message = None
    try:
        key = services.api_key_revoke(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        message = f"Revoked {key.name} of {key.user.get_username()}."
    except DomainError as exc:
        error = exc.message
    return _team_page(request, error=error, message=message)


@admin_required
@require_POST
def team_key_limits(request: HttpRequest, key_id: int) -> HttpResponse:
    error = message = None
    post = request.POST
    try:
        key = services.api_key_update(
            actor=request.user,
            key_id=key_id,
            allowed_models=_models_from(post.getlist("allowed_models")),
            rpm_limit=_optional_int(post.get("rpm_limit"), "rpm_limit"),
            tokens_per_day=_optional_int(post.get("tokens_per_day"), "tokens_per_day"),
        )
        message = f"Saved the limits of {key.name} ({key.user.get_username()})."
    except DomainError as exc:
        error = exc.message
    return _team_page(request, error=error, message=message, failed_key=key_id if error else None)


def _team_page(
    request: HttpRequest, *, error: str | None, message: str | None, failed_key: int | None = None
) -> HttpResponse:
    username = (request.GET.get("user") or request.POST.get("user") or "").strip()[:150]
    keys = services.api_key_list_all(username=username)
    usage = services.key_usage([k.pk for k in keys])
    context = {
        "rows": [(k, usage.get(k.pk, {})) for k in keys],
        "usernames": [u.get_username() for u in services.user_list()],
        "selected_user": username,
        "model_choices": services.allowed_model_choices(),
        "now": timezone.now(),
        "error": error,
        "message": message,
        "failed_key": failed_key,
    }
    template = "accounts/team_keys.html#team-keys-panel" if request.htmx else "accounts/team_keys.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=400 if error else 200)


# --- admin tokens for /api (admins) -----------------------------------------------------------


@admin_required
@require_http_methods(["GET", "POST"])
def admin_tokens(request: HttpRequest) -> HttpResponse:
    error = created_secret = None
    if request.method == "POST":
        post = request.POST
        try:
            days = (post.get("expires_days") or "").strip()
            try:
                expires_days = float(days) if days else None
            except ValueError as exc:
                raise DomainError("the expiry is a number of days", param="expires_days") from exc
            _, created_secret = services.admin_token_create(
                user=request.user,
                name=post.get("name", ""),
                scope=post.get("scope", ""),
                expires_days=expires_days,
            )
        except DomainError as exc:
            error = exc.message
    return _tokens_page(request, error=error, created_secret=created_secret)


@admin_required
@require_POST
def admin_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    error = None
    try:
        services.admin_token_revoke(user=request.user, token_id=token_id)
    except DomainError as exc:
        error = exc.message
    return _tokens_page(request, error=error, created_secret=None)


def _tokens_page(request: HttpRequest, *, error: str | None, created_secret: str | None) -> HttpResponse:
    context = {
        "tokens": services.admin_token_list(),
        "now": timezone.now(),
        "error": error,
        "created_secret": created_secret,
        "form": request.POST if error else {},
        "api_url": request.build_absolute_uri("/api"),
    }
    template = "accounts/admin_tokens.html#tokens-panel" if request.htmx else "accounts/admin_tokens.html"  # type: ignore[attr-defined]
    return render(request, template, context, status=400 if error else 200)


# --- users (admins) -----------------------------------------------------------------------


@admin_required
@require_http_methods(["GET", "POST"])
def users(request: HttpRequest) -> HttpResponse:
    """List users; POST creates one (username, password, role)."""
    error = message = None
    typed: dict[str, str] = {}
    if request.method == "POST":
        post = request.POST
        try:
            made = services.user_create(
                username=post.get("username", ""),
                password=post.get("password", ""),
                role=post.get("role", "member"),
            )
            message = f"Created {made.username} ({services.role_of(made)})."
        except DomainError as exc:
            error = exc.message
            # The form keeps what was typed (not the password: secrets are never sent back).
            typed = {"username": post.get("username", "")[:150], "role": post.get("role", "member")}
    return _users_page(request, error=error, message=message, typed=typed)


# What each row action does, and what its confirm step says. Activating needs no confirmation.
_USER_ACTIONS: dict[str, dict[str, Any]] = {
    "make-admin": {"role": "admin"},
    "make-member": {"role": "member"},
    "deactivate": {"is_active": False},
    "activate": {"is_active": True},
}
_CONFIRM: dict[str, tuple[str, str, str]] = {
    # action: (question, what happens, button)
    "make-admin": (
        "Make {name} an admin?",
        "Admins administer the whole gateway: profiles, routing, credentials, users and the audit log.",
        "Make admin",
    ),
    "make-member": (
        "Make {name} a member?",
        "{name} keeps their API keys and the playground, and loses every admin page.",
        "Make member",
    ),
    "deactivate": (
        "Deactivate {name}?",
        "{name} can no longer sign in, and their API keys stop working at once. You can activate them again later.",
        "Deactivate",
    ),
    "reset-link": (
        "Reset {name}'s password with a one-time link?",
        "You get a link to give to {name}; it works once, until they set a new password, for "
        "{days} days. Their current password keeps working until then.",
        "Create the link",
    ),
    "reset-temporary": (
        "Reset {name}'s password to a temporary one?",
        "Their current password stops working and their sessions end now. You get a temporary "
        "password to give them; they must choose their own when they next sign in.",
        "Set a temporary password",
    ),
}


@admin_required
@require_POST
def user_change(request: HttpRequest, user_id: int) -> HttpResponse:
    """Role, activation and password resets. Anything but activating asks first: without
    `confirm=yes` the answer is a confirm page (a plain form, no JavaScript needed)."""
    error = message = None
    reset = None
    action = request.POST.get("action", "")
    if action not in _USER_ACTIONS and action not in ("reset-link", "reset-temporary"):
        return _users_page(request, error="unknown action", message=None, status=400)
    if action in _CONFIRM and request.POST.get("confirm") != "yes":
        try:
            target = services.user_list_one(user_id)
        except DomainError as exc:
            return _users_page(request, error=exc.message, message=None, status=exc.status)
        question, detail, button = _CONFIRM[action]
        days = max(1, settings.PASSWORD_RESET_TIMEOUT // 86400)
        context = {
            "target": target,
            "action": action,
            "question": question.format(name=target.username),
            "detail": detail.format(name=target.username, days=days),
            "button": button,
            "danger": action in ("deactivate", "make-member", "reset-temporary"),
        }
        return render(request, "accounts/user_confirm.html", context)
    try:
        if action.startswith("reset-"):
            reset = passwords.password_reset(
                user_id=user_id, method=action.removeprefix("reset-"), actor=request.user
            )
            message = f"Reset {reset.username}'s password."
        else:
            changed = services.user_update(user_id=user_id, actor=request.user, **_USER_ACTIONS[action])
            message = f"Updated {changed.username}."
    except DomainError as exc:
        error = exc.message
    reset_url = request.build_absolute_uri(reset.secret) if reset and reset.method == "link" else None
    return _users_page(request, error=error, message=message, reset=reset, reset_url=reset_url)


def _users_page(
    request: HttpRequest,
    *,
    error: str | None,
    message: str | None,
    typed: dict[str, str] | None = None,
    status: int | None = None,
    **extra: Any,
) -> HttpResponse:
    context = {
        "people": [(u, services.role_of(u)) for u in services.user_list()],
        "error": error,
        "message": message,
        "typed": typed or {},
        **extra,
    }
    template = "accounts/users.html#users-panel" if request.htmx else "accounts/users.html"  # type: ignore[attr-defined]
    response = render(request, template, context, status=status or (400 if error else 200))
    if extra.get("reset") is not None:
        response["Cache-Control"] = "no-store"  # the page shows a secret once
    return response


# --- the first admin, from the setup link `serve` prints (mlxmanager/accounts/setup.py) ----


def _setup_open() -> bool:
    """Whether setup is possible at all: no user yet. Once one exists the token is dropped."""
    if selectors.users_exist():
        setup.setup_token_discard()
        return False
    return True


@never_cache
@require_GET
def setup_start(request: HttpRequest, token: str) -> HttpResponse:
    """The link itself: a right token goes into the session, and on to the form at /setup/."""
    if not _setup_open() or not setup.token_matches(token):
        raise Http404("no such page")
    request.session[setup.SESSION_KEY] = setup.digest_of(token)
    return redirect("setup")


@never_cache
@require_http_methods(["GET", "POST"])
def setup_admin(request: HttpRequest) -> HttpResponse:
    """Create the first admin (username, password twice), log them in, go home."""
    digest = str(request.session.get(setup.SESSION_KEY) or "")
    if not _setup_open() or not setup.digest_matches(digest):
        raise Http404("no such page")
    errors: dict[str, str] = {}
    username = request.POST.get("username", "").strip() if request.method == "POST" else ""
    if request.method == "POST":
        password = request.POST.get("password1", "")
        if not username or len(username) > 150 or any(c.isspace() for c in username):
            errors["username"] = "A username is 1-150 characters without spaces."
        if not password:
            errors["password1"] = "Choose a password."
        elif password != request.POST.get("password2", ""):
            errors["password2"] = "The two passwords differ."
        if not errors:
            claimed = setup.setup_token_claim(digest)
            if claimed is None:
                raise Http404("no such page")
            try:
                user = services.user_create_admin(username=username, password=password)
            except DomainError as exc:
                setup.setup_token_release(claimed)
                errors["password1" if exc.param == "password" else "username"] = exc.message
            else:
                setup.setup_token_spend(claimed)
                request.session.pop(setup.SESSION_KEY, None)
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                return redirect("home")
    context = {"username": username, "errors": errors}
    return render(request, "accounts/setup.html", context, status=400 if errors else 200)
