"""Writes: admin-change entries (`log_action`) and retention (`audit_prune`).

Request rows are written by the recorder's flusher thread, never here on the request path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone

from mlxmanager.audit.models import AdminAction, RequestLog
from mlxmanager.audit.recorder import cutoff_for

# Action codes and their labels (pretix's logentrytypes idea: a registry, not free text).
ACTIONS: dict[str, str] = {
    "mlxmanager.user.created": "User created",
    "mlxmanager.user.changed": "User changed",
    "mlxmanager.user.deleted": "User deleted",
    "mlxmanager.apikey.created": "API key created",
    "mlxmanager.apikey.changed": "API key changed",
    "mlxmanager.apikey.revoked": "API key revoked",
    "mlxmanager.apikey.deleted": "API key deleted",
    "mlxmanager.profile.created": "Profile created",
    "mlxmanager.profile.changed": "Profile changed",
    "mlxmanager.profile.deleted": "Profile deleted",
    "mlxmanager.hub_token.set": "Hugging Face token saved",
    "mlxmanager.hub_token.removed": "Hugging Face token removed",
    "mlxmanager.credential.created": "Credential created",
    "mlxmanager.credential.changed": "Credential changed",
    "mlxmanager.credential.secret_replaced": "Credential secret replaced",
    "mlxmanager.credential.tested": "Credential tested",
    "mlxmanager.credential.deleted": "Credential deleted",
    "mlxmanager.credential.reencrypted": "Credentials re-encrypted",
    "mlxmanager.rule.created": "Routing rule created",
    "mlxmanager.rule.changed": "Routing rule changed",
    "mlxmanager.rule.reordered": "Routing rules reordered",
    "mlxmanager.rule.deleted": "Routing rule deleted",
    "mlxmanager.audit.pruned": "Audit log pruned",
}

# Never recorded by value, whatever the model: only "this field changed".
SECRET_FIELDS = frozenset({"password", "digest", "secret", "secret_jwe", "token", "key"})


def action_label(code: str) -> str:
    return ACTIONS.get(code, code)


def _actor(user: Any) -> tuple[int | None, str]:
    if user is None or not getattr(user, "is_authenticated", False):
        return None, ""
    return user.pk, user.get_username()


def _scrub(data: dict[str, Any] | None) -> dict[str, Any]:
    """Drop secret values anywhere in `data` (a changed secret shows as "(changed)")."""
    if not data:
        return {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECRET_FIELDS:
            out[key] = "(changed)"
        elif isinstance(value, dict):
            out[key] = _scrub(value)
        else:
            out[key] = value
    return out


def log_action(
    obj: models.Model | None,
    action: str,
    *,
    user: Any = None,
    data: dict[str, Any] | None = None,
    object_type: str = "",
    object_repr: str = "",
    now: datetime | None = None,
) -> AdminAction:
    """Record an admin change. `data` holds what changed; secrets never appear in it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to ACTIONS")
    actor_id, actor_name = _actor(user)
    return AdminAction.objects.create(
        created_at=now or timezone.now(),
        actor_id=actor_id,
        actor_name=actor_name,
        action=action,
        object_type=object_type or (obj._meta.model_name if obj is not None else "") or "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=(object_repr or (str(obj) if obj is not None else ""))[:200],
        data=_scrub(data),
    )


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`{field: [old, new]}` for the fields that differ (secret fields: names only)."""
    out: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            out[key] = "(changed)" if key in SECRET_FIELDS else [_plain(old), _plain(new)]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


def audit_prune(*, days: int, now: datetime | None = None, user: Any = None, chunk: int = 20_000) -> int:
    """Delete request rows older than `days` days, in chunks so writers never wait long.

    Admin-change entries are kept: they are few, and they are the record of who did what.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    cutoff = cutoff_for(days, now=now)
    deleted = 0
    while True:
        ids = list(
            RequestLog.objects.filter(created_at__lt=cutoff)
            .order_by("created_at", "id")
            .values_list("id", flat=True)[:chunk]
        )
        if not ids:
            break
        deleted += RequestLog.objects.filter(id__in=ids).delete()[0]
    if deleted:
        log_action(
            None,
            "mlxmanager.audit.pruned",
            user=user,
            object_type="audit",
            object_repr=f"requests before {cutoff:%Y-%m-%d %H:%M}",
            data={"days": days, "deleted": deleted},
            now=now,
        )
    return deleted
