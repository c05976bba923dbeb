"""Writes for users and API keys."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from mlxmanager.accounts import limits
from mlxmanager.accounts.models import ApiKey, UserLimits
from mlxmanager.errors import Conflict, DomainError, NotFound
from mlxmanager.permissions import is_admin

KEY_PREFIX = "mlxm-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_password(password: str, user: Any) -> None:
    """settings.AUTH_PASSWORD_VALIDATORS with the (unsaved) user, so the rules that compare with
    the username or need the role apply; a 400 naming every rule the password breaks."""
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise DomainError(" ".join(exc.messages), param="password") from exc


def user_create_admin(*, username: str, password: str, email: str = "") -> User:
    User = get_user_model()
    username = username.strip()
    if not username:
        raise DomainError("username must not be empty", param="username")
    if User.objects.filter(username=username).exists():
        raise Conflict(f"user '{username}' already exists", param="username")
    _check_password(password, User(username=username, email=email, is_staff=True, is_superuser=True))
    return User.objects.create_superuser(username=username, email=email, password=password)


MAX_EXPIRY_DAYS = 3650


def expiry_after(days: float | None) -> datetime | None:
    """The expiry `days` from now (None: never), for the keys page and `create_api_key`."""
    if days is None:
        return None
    if not 0 < days <= MAX_EXPIRY_DAYS:
        raise DomainError(
            f"a key expires after more than 0 and at most {MAX_EXPIRY_DAYS} days", param="expires_at"
        )
    return timezone.now() + timedelta(days=days)


def _clean_limits(
    allowed_models: list[str] | None, rpm_limit: int | None, tokens_per_day: int | None
) -> dict[str, object]:
    models = []
    for name in allowed_models or []:
        name = str(name).strip()
        if not name or len(name) > 200:
            raise DomainError(
                "each allowed model is a model name of 1-200 characters", param="allowed_models"
            )
        if name not in models:
            models.append(name)
    if len(models) > 200:
        raise DomainError("at most 200 allowed models", param="allowed_models")
    for value, param in ((rpm_limit, "rpm_limit"), (tokens_per_day, "tokens_per_day")):
        if value is not None and (not isinstance(value, int) or value < 1 or value > 10**12):
            raise DomainError(f"{param} must be a positive whole number (or empty: no limit)", param=param)
    return {"allowed_models": models, "rpm_limit": rpm_limit, "tokens_per_day": tokens_per_day}


@transaction.atomic
def api_key_create(
    *,
    user: User,
    name: str,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tokens_per_day: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; the secret is returned once and never stored. Limits are optional."""
    name = name.strip()
    if not name:
        raise DomainError("a key needs a name", param="name")
    if len(name) > 100:
        raise DomainError("the name is longer than 100 characters", param="name")
    if expires_at is not None:
        if timezone.is_naive(expires_at):  # an ISO time without an offset: UTC, like every time here
            expires_at = timezone.make_aware(expires_at, UTC)
        now = timezone.now()
        if expires_at <= now:
            raise DomainError("the expiry must be in the future", param="expires_at")
        # The keys page and create_api_key offer at most MAX_EXPIRY_DAYS; /api holds to the same.
        if expires_at > now + timedelta(days=MAX_EXPIRY_DAYS):
            raise DomainError(
                f"a key expires at most {MAX_EXPIRY_DAYS} days from now (or never: leave the expiry out)",
                param="expires_at",
            )
    limits = _clean_limits(allowed_models, rpm_limit, tokens_per_day)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        digest=hash_key(secret),
        expires_at=expires_at,
        **limits,
    )
    return key, secret


def api_key_revoke(*, user: User, key_id: int, now: datetime | None = None) -> ApiKey:
    """Revoke one of `user`'s keys (admins may revoke anyone's)."""
    qs = ApiKey.objects.all() if is_admin(user) else ApiKey.objects.filter(user=user)
    try:
        key = qs.get(pk=key_id)
    except ApiKey.DoesNotExist as exc:
        raise NotFound("no such API key") from exc
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


# --- people (admins manage them on the Users page and /api/users) ------------------------

ROLES = ("admin", "member")


def role_of(user: Any) -> str:
    return "admin" if user.is_staff else "member"


def _active_admins() -> int:
    return get_user_model().objects.filter(is_staff=True, is_active=True).count()


def user_create(*, username: str, password: str, role: str = "member") -> User:
    """Create a dashboard user; admins administer the gateway, members use the playground
    and their own API keys."""
    # Audited by the signals in mlxmanager/audit/signals.py (who, what changed; no password).
    if role not in ROLES:
        raise DomainError("role must be admin or member", param="role")
    username = (username or "").strip()
    if not username or len(username) > 150 or any(c.isspace() for c in username):
        raise DomainError("the username is 1-150 characters without spaces", param="username")
    model = get_user_model()
    if model.objects.filter(username=username).exists():
        raise Conflict(f"user '{username}' already exists", param="username")
    _check_password(password, model(username=username, is_staff=role == "admin"))
    with transaction.atomic():
        user = model.objects.create_user(username=username, password=password)
        user.is_staff = role == "admin"
        user.save(update_fields=["is_staff"])
    return user


def user_update(
    *, user_id: int, role: str | None = None, is_active: bool | None = None, actor: Any = None
) -> User:
    """Change a user's role or deactivate/reactivate them. Nobody can lock the gateway out:
    you cannot demote or deactivate yourself, nor remove the last active admin."""
    if role is not None and role not in ROLES:
        raise DomainError("role must be admin or member", param="role")
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
        if user is None:
            raise NotFound("no such user")
        demoting = role == "member" and user.is_staff
        deactivating = is_active is False and user.is_active
        if (demoting or deactivating) and actor is not None and actor.pk == user.pk:
            raise Conflict("you cannot demote or deactivate yourself; ask another admin")
        if (demoting or (deactivating and user.is_staff)) and _active_admins() <= 1:
            raise Conflict("this is the last active admin; make someone else admin first")
        changes: dict[str, Any] = {}
        if role is not None and role != role_of(user):
            user.is_staff = role == "admin"
            changes["role"] = role
        if is_active is not None and is_active != user.is_active:
            user.is_active = is_active
            changes["is_active"] = is_active
        if changes:
            user.save(update_fields=["is_staff", "is_active"])
    # An inactive user's API keys stop working at once (checked on every request).
    return user


def user_list() -> list[User]:
    return list(get_user_model().objects.select_related("limits").order_by("username"))


def user_limits_set(*, user_id: int, rpm_limit: int | None, tokens_per_day: int | None) -> UserLimits:
    """Set a user's own limits (over every key and the playground); 0 or None removes one."""
    for name, value in (("rpm_limit", rpm_limit), ("tokens_per_day", tokens_per_day)):
        if value is not None and value < 0:
            raise DomainError(f"{name} must be 0 (no limit) or more", param=name)
    if not get_user_model().objects.filter(pk=user_id).exists():
        raise NotFound("no such user")
    limits_row, _ = UserLimits.objects.update_or_create(
        user_id=user_id, defaults={"rpm_limit": rpm_limit or None, "tokens_per_day": tokens_per_day or None}
    )
    transaction.on_commit(lambda: limits.forget_user_limits(user_id))
    return limits_row


def user_list_one(user_id: int) -> User:
    user = get_user_model().objects.select_related("limits").filter(pk=user_id).first()
    if user is None:
        raise NotFound("no such user")
    return user
