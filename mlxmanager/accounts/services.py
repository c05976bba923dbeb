"""Writes for users and API keys."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.errors import Conflict, DomainError, NotFound

KEY_PREFIX = "mlxm-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def user_create_admin(*, username: str, password: str, email: str = "") -> User:
    User = get_user_model()
    username = username.strip()
    if not username:
        raise DomainError("username must not be empty", param="username")
    if User.objects.filter(username=username).exists():
        raise Conflict(f"user '{username}' already exists", param="username")
    try:
        validate_password(password)
    except ValidationError as exc:
        raise DomainError(" ".join(exc.messages), param="password") from exc
    return User.objects.create_superuser(username=username, email=email, password=password)


@transaction.atomic
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
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("the expiry must be in the future", param="expires_at")
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
    qs = ApiKey.objects.all() if getattr(user, "is_staff", False) else ApiKey.objects.filter(user=user)
    try:
        key = qs.get(pk=key_id)
    except ApiKey.DoesNotExist as exc:
        raise NotFound("no such API key") from exc
    if key.revoked_at is None:
        key.revoked_at = now or timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
