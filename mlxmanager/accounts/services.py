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
from mlxmanager.errors import Conflict, DomainError, NotFound, PermissionDenied
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
    if models:
        known = set(allowed_model_choices())
        unknown = [m for m in models if m not in known]
        if unknown:
            raise DomainError(
                f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(repr(m) for m in unknown[:5])}: "
                "choose profiles or routing-rule patterns (exact or glob)",
                param="allowed_models",
            )
    for value, param in ((rpm_limit, "rpm_limit"), (tokens_per_day, "tokens_per_day")):
        if value is not None and (not isinstance(value, int) or value < 1 or value > 10**12):
            raise DomainError(f"{param} must be a positive whole number (or empty: no limit)", param=param)
    return {"allowed_models": models, "rpm_limit": rpm_limit, "tokens_per_day": tokens_per_day}


def allowed_model_choices() -> list[str]:
    """What a key's allowed models are chosen from: every profile's name and the pattern of
    every exact or glob routing rule (a glob such as `claude-*` allows every name it matches).
    Regex rules are left out: a key lists names, not regexes."""
    from mlxmanager.profiles.models import Profile
    from mlxmanager.rules.models import Rule

    names = list(Profile.objects.order_by("name").values_list("name", flat=True))
    patterns = Rule.objects.filter(match_type__in=[Rule.Match.EXACT, Rule.Match.GLOB]).order_by("pattern")
    for pattern in patterns.values_list("pattern", flat=True):
        if pattern not in names:
            names.append(pattern)
    return names


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


def api_key_update(
    *,
    actor: Any,
    key_id: int,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tokens_per_day: int | None = None,
) -> ApiKey:
    """Replace a key's limits (its owner, or any admin): allowed models (empty: all), requests
    per minute and tokens per UTC day (None or 0: no limit). Audited as an API key change."""
    qs = ApiKey.objects.all() if is_admin(actor) else ApiKey.objects.filter(user=actor)
    key = qs.select_related("user").filter(pk=key_id).first()
    if key is None:
        raise NotFound("no such API key")
    cleaned = _clean_limits(allowed_models, rpm_limit or None, tokens_per_day or None)
    for field, value in cleaned.items():
        setattr(key, field, value)
    key.save(update_fields=list(cleaned))  # the key cache forgets it (keycache signals)
    return key


def api_key_list_all(*, username: str = "") -> list[ApiKey]:
    """Every user's keys (the team keys page), newest first; `username`: only theirs."""
    qs = ApiKey.objects.select_related("user").order_by("-created_at")
    if username:
        qs = qs.filter(user__username=username)
    return list(qs)


def key_usage(key_ids: list[int], *, now: datetime | None = None) -> dict[int, dict[str, int]]:
    """Tokens (prompt + completion) and requests per key today and this month (UTC), from the
    request log (the hourly rollups carry no key): `{key_id: {"today": n, "month": n,
    "requests_today": n, "requests_month": n}}`; keys without traffic are absent."""
    from django.db.models import Count, Q, Sum

    from mlxmanager.audit.models import RequestLog

    if not key_ids:
        return {}
    now = (now or timezone.now()).astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    today = Q(created_at__gte=day)
    rows = (
        RequestLog.objects.filter(api_key_id__in=key_ids, created_at__gte=month)
        .values("api_key_id")
        .annotate(
            pm=Sum("prompt_tokens"),
            cm=Sum("completion_tokens"),
            nm=Count("id"),
            pd=Sum("prompt_tokens", filter=today),
            cd=Sum("completion_tokens", filter=today),
            nd=Count("id", filter=today),
        )
    )
    out: dict[int, dict[str, int]] = {}
    for row in rows:
        out[row["api_key_id"]] = {
            "today": int(row["pd"] or 0) + int(row["cd"] or 0),
            "month": int(row["pm"] or 0) + int(row["cm"] or 0),
            "requests_today": int(row["nd"] or 0),
            "requests_month": int(row["nm"] or 0),
        }
    return out


# --- admin tokens for /api (scripts and CI) ------------------------------------------------

ADMIN_TOKEN_PREFIX = "mlxa-"  # noqa: S105 - a prefix, not a secret
MAX_TOKEN_DAYS = 365


def admin_token_create(*, user: Any, name: str, scope: str, expires_days: float | None) -> tuple[Any, str]:
    """A token that acts as `user` (an admin) on /api; the secret is returned once."""
    from mlxmanager.accounts.models import AdminToken
    from mlxmanager.audit.services import log_action

    if not is_admin(user):
        raise PermissionDenied("only admins can create admin tokens")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise DomainError("a token needs a name of 1-100 characters", param="name")
    if scope not in (AdminToken.SCOPE_READ, AdminToken.SCOPE_WRITE):
        raise DomainError("scope is read or write", param="scope")
    if expires_days is None or not 0 < expires_days <= MAX_TOKEN_DAYS:
        raise DomainError(
            f"an admin token expires after more than 0 and at most {MAX_TOKEN_DAYS} days",
            param="expires_days",
        )
    secret = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = AdminToken.objects.create(
            name=name,
            prefix=secret[: len(ADMIN_TOKEN_PREFIX) + 6],
            digest=hash_key(secret),
            scope=scope,
            created_by=user,
            expires_at=timezone.now() + timedelta(days=expires_days),
        )
        log_action(
            token,
            "mlxmanager.admintoken.created",
            user=user,
            object_type="admintoken",
            data={"scope": scope, "expires_at": token.expires_at.isoformat()},
        )
    return token, secret


def admin_token_revoke(*, user: Any, token_id: int) -> Any:
    from mlxmanager.accounts.models import AdminToken
    from mlxmanager.audit.services import log_action

    with transaction.atomic():
        token = AdminToken.objects.select_for_update().filter(pk=token_id).first()
        if token is None:
            raise NotFound("no such admin token")
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            log_action(token, "mlxmanager.admintoken.revoked", user=user, object_type="admintoken")
    return token


def admin_token_list() -> list[Any]:
    from mlxmanager.accounts.models import AdminToken

    return list(AdminToken.objects.select_related("created_by").order_by("-created_at"))


def admin_token_authenticate(secret: str) -> Any:
    """The active token matching `secret` whose creator is still an active admin; else None."""
    from mlxmanager.accounts.models import AdminToken

    if not secret or len(secret) > 200 or not secret.startswith(ADMIN_TOKEN_PREFIX):
        return None
    token = AdminToken.objects.select_related("created_by").filter(digest=hash_key(secret)).first()
    if token is None:
        return None
    now = timezone.now()
    if not token.is_active(now=now) or not is_admin(token.created_by):
        return None
    AdminToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
    return token


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


def user_by_username(username: str) -> User:
    user = get_user_model().objects.filter(username=username.strip()[:150]).first()
    if user is None:
        raise NotFound(f"no user '{username[:150]}'", param="username")
    return user


def user_list_one(user_id: int) -> User:
    user = get_user_model().objects.select_related("limits").filter(pk=user_id).first()
    if user is None:
        raise NotFound("no such user")
    return user
