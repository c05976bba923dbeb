"""API keys in the management API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.accounts import selectors, services
from mlxmanager.accounts.tokens import DEFAULT_TTL_SECONDS, token_mint
from mlxmanager.permissions import require_admin

router = Router(tags=["api keys"])


class KeyOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    allowed_models: list[str]
    rpm_limit: int | None
    tokens_per_day: int | None


class KeyIn(Schema):
    name: str
    username: str | None = None  # admins: the key's owner (default: you)
    expires_at: datetime | None = None
    allowed_models: list[str] = []
    rpm_limit: int | None = None
    tokens_per_day: int | None = None


class KeyCreated(KeyOut):
    key: str


@router.get("/", response=list[KeyOut])
def list_keys(request: HttpRequest) -> list[KeyOut]:
    return list(selectors.api_key_list(user=request.user))  # type: ignore[arg-type]


@router.post("/", response={201: KeyCreated})
def create_key(request: HttpRequest, body: KeyIn) -> Status[dict[str, object]]:
    """Create a key for yourself, or (admins, `username`) for another user."""
    owner = request.user
    if body.username:
        require_admin(request, "create keys for other users")
        owner = services.user_by_username(body.username)
    key, secret = services.api_key_create(
        user=owner,  # type: ignore[arg-type]
        name=body.name,
        expires_at=body.expires_at,
        allowed_models=body.allowed_models,
        rpm_limit=body.rpm_limit,
        tokens_per_day=body.tokens_per_day,
    )
    return Status(201, {**KeyOut.model_validate(key).model_dump(), "key": secret})


class TeamKeyOut(KeyOut):
    user_id: int
    username: str
    tokens_today: int = 0
    tokens_month: int = 0
    requests_today: int = 0
    requests_month: int = 0

    @staticmethod
    def resolve_username(obj: Any) -> str:
        return str(obj.user.get_username())


class KeyLimitsIn(Schema):
    """A key's limits, replaced as a whole: allowed models (profile names or exact/glob rule
    patterns from `GET /api/keys/models`; empty: all), requests per minute and tokens per UTC
    day (null or 0: no limit)."""

    allowed_models: list[str] = []
    rpm_limit: int | None = None
    tokens_per_day: int | None = None


def _with_usage(keys: list[Any]) -> list[Any]:
    usage = services.key_usage([k.pk for k in keys])
    for key in keys:
        row = usage.get(key.pk, {})
        key.tokens_today, key.tokens_month = row.get("today", 0), row.get("month", 0)
        key.requests_today, key.requests_month = row.get("requests_today", 0), row.get("requests_month", 0)
    return keys


@router.get("/all", response=list[TeamKeyOut])
def list_team_keys(request: HttpRequest, username: str = "") -> object:
    """Every user's keys (admins), with tokens used today and this month (UTC); `username`:
    only that user's."""
    require_admin(request, "see every key")
    return _with_usage(services.api_key_list_all(username=username[:150]))


@router.get("/models", response=list[str])
def allowed_model_choices(request: HttpRequest) -> list[str]:
    """What a key's `allowed_models` are chosen from: profile names and the patterns of exact
    and glob routing rules (a glob such as `claude-*` allows every name it matches)."""
    return services.allowed_model_choices()


@router.patch("/{key_id}", response=KeyOut)
def update_key_limits(request: HttpRequest, key_id: int, body: KeyLimitsIn) -> object:
    """Replace a key's limits: your own key, or anyone's for admins. Unknown model names are
    refused (400, `param` "allowed_models")."""
    return services.api_key_update(
        actor=request.user,
        key_id=key_id,
        allowed_models=body.allowed_models,
        rpm_limit=body.rpm_limit,
        tokens_per_day=body.tokens_per_day,
    )


@router.post("/{key_id}/revoke", response=KeyOut)
def revoke_key(request: HttpRequest, key_id: int) -> object:
    return services.api_key_revoke(user=request.user, key_id=key_id)  # type: ignore[arg-type]


class StreamTokenOut(Schema):
    token: str
    expires_in: int
    purpose: str


tokens_router = Router(tags=["stream tokens"])


@tokens_router.post("/stream", response=StreamTokenOut)
def stream_token(request: HttpRequest, purpose: str = "ws-chat") -> dict[str, object]:
    """A short-lived JWT for `/v1/ws/chat?token=` (purpose `ws-chat`) or SSE (`sse`)."""
    token = token_mint(user_id=int(request.user.pk or 0), purpose=purpose)
    return {"token": token, "expires_in": DEFAULT_TTL_SECONDS, "purpose": purpose}


# --- users (admins) -----------------------------------------------------------------------

users_router = Router(tags=["users"])


class UserOut(Schema):
    id: int
    username: str
    role: str
    is_active: bool
    date_joined: datetime
    last_login: datetime | None
    rpm_limit: int | None = None
    tokens_per_day: int | None = None

    @staticmethod
    def resolve_role(obj: object) -> str:
        return services.role_of(obj)

    @staticmethod
    def resolve_rpm_limit(obj: Any) -> int | None:
        row = getattr(obj, "limits", None) if _has_limits(obj) else None
        return row.rpm_limit if row is not None else None

    @staticmethod
    def resolve_tokens_per_day(obj: Any) -> int | None:
        row = getattr(obj, "limits", None) if _has_limits(obj) else None
        return row.tokens_per_day if row is not None else None


def _has_limits(user: Any) -> bool:
    from mlxmanager.accounts.models import UserLimits

    try:
        return user.limits is not None
    except UserLimits.DoesNotExist:
        return False


class UserIn(Schema):
    username: str
    password: str
    role: str = "member"


class UserPatch(Schema):
    role: str | None = None
    is_active: bool | None = None


class UserLimitsIn(Schema):
    """A user's own limits over all their traffic (every key and the playground); 0 or null: none."""

    rpm_limit: int | None = None
    tokens_per_day: int | None = None


@users_router.get("/", response=list[UserOut])
def list_users(request: HttpRequest) -> object:
    require_admin(request, "see users")
    return services.user_list()


@users_router.post("/", response={201: UserOut})
def create_user(request: HttpRequest, body: UserIn) -> object:
    """Create a user with a role: `admin` (administers the gateway) or `member` (playground and
    their own API keys)."""
    require_admin(request, "create users")
    user = services.user_create(username=body.username, password=body.password, role=body.role)
    return Status(201, user)


@users_router.patch("/{user_id}", response=UserOut)
def update_user(request: HttpRequest, user_id: int, body: UserPatch) -> object:
    """Change a role or (de)activate; you cannot demote yourself or remove the last admin."""
    require_admin(request, "change users")
    return services.user_update(user_id=user_id, role=body.role, is_active=body.is_active, actor=request.user)


@users_router.put("/{user_id}/limits", response=UserOut)
def set_user_limits(request: HttpRequest, user_id: int, body: UserLimitsIn) -> object:
    """A user's own limits (requests per minute, tokens per UTC day) over every key and the
    playground: past one, requests get a 429 with Retry-After."""
    require_admin(request, "change users")
    services.user_limits_set(user_id=user_id, rpm_limit=body.rpm_limit, tokens_per_day=body.tokens_per_day)
    return services.user_list_one(user_id)


# --- admin tokens (admins): scripts and CI on /api -------------------------------------------

admin_tokens_router = Router(tags=["admin tokens"])


class AdminTokenOut(Schema):
    id: int
    name: str
    prefix: str
    scope: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @staticmethod
    def resolve_created_by(obj: Any) -> str:
        return str(obj.created_by.get_username())


class AdminTokenIn(Schema):
    name: str
    scope: str = "read"
    expires_days: float = 90


class AdminTokenCreated(AdminTokenOut):
    token: str


@admin_tokens_router.get("/", response=list[AdminTokenOut])
def list_admin_tokens(request: HttpRequest) -> object:
    return services.admin_token_list()


@admin_tokens_router.post("/", response={201: AdminTokenCreated})
def create_admin_token(request: HttpRequest, body: AdminTokenIn) -> object:
    """A token for `Authorization: Bearer` on /api, acting as you: scope `read` (GET only) or
    `write`; expires after `expires_days` (at most 365). The secret is shown only here."""
    token, secret = services.admin_token_create(
        user=request.user, name=body.name, scope=body.scope, expires_days=body.expires_days
    )
    token.token = secret  # shown this once; only its digest is stored
    return Status(201, token)


@admin_tokens_router.post("/{token_id}/revoke", response=AdminTokenOut)
def revoke_admin_token(request: HttpRequest, token_id: int) -> object:
    return services.admin_token_revoke(user=request.user, token_id=token_id)
