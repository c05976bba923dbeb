"""Writes: admin-change entries (`log_action`), retention (`audit_prune`) and the hourly
rollups (`rollup_add`, `rollup_rebuild`).

Request rows are written by the recorder's flusher thread, never here on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from mlxmanager.audit.models import AdminAction, RequestHourly, RequestLog
from mlxmanager.audit.recorder import cutoff_for

# Action codes and their labels (pretix's logentrytypes idea: a registry, not free text).
ACTIONS: dict[str, str] = {
    "mlxmanager.user.created": "User created",
    "mlxmanager.user.changed": "User changed",
    "mlxmanager.user.deleted": "User deleted",
    "mlxmanager.user.password_reset": "Password reset by an admin",
    "mlxmanager.apikey.created": "API key created",
    "mlxmanager.apikey.changed": "API key changed",
    "mlxmanager.apikey.revoked": "API key revoked",
    "mlxmanager.apikey.deleted": "API key deleted",
    "mlxmanager.profile.created": "Profile created",
    "mlxmanager.profile.changed": "Profile changed",
    "mlxmanager.profile.deleted": "Profile deleted",
    "mlxmanager.hub_token.set": "Hugging Face token saved",
    "mlxmanager.conversion.created": "Model conversion queued",
    "mlxmanager.conversion.cancelled": "Model conversion cancelled",
    "mlxmanager.conversion.dismissed": "Model conversion dismissed",
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
    "mlxmanager.sso.changed": "Single sign-on settings changed",
    "mlxmanager.admintoken.created": "Admin token created",
    "mlxmanager.admintoken.revoked": "Admin token revoked",
    "mlxmanager.admintoken.used": "Admin token used",
    "mlxmanager.price.set": "Price set",
    "mlxmanager.price.deleted": "Price deleted",
    "mlxmanager.budget.set": "Budget set",
    "mlxmanager.budget.removed": "Budget removed",
    "mlxmanager.settings.changed": "Settings changed",
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
    from mlxmanager.audit.signals import current_via

    via = current_via()
    if via:  # the change came through an admin token on /api: which one
        data = {**(data or {}), "via_token": via}
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
    rollup_prune(cutoff)
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


# ---- hourly rollups -------------------------------------------------------------------

Group = tuple[datetime, str, str, str, int, bool]
_GROUP_FIELDS = ("bucket", "username", "requested_model", "backend", "status", "ok")


def hour_of(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def is_ok(status: int, error_type: str) -> bool:
    return status < 400 and not error_type


def _upsert(groups: dict[Group, list[int]]) -> None:
    """Add the groups' counts to their rollup rows (created when missing): one statement."""
    if not groups:
        return
    table = connection.ops.quote_name(RequestHourly._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(c) for c in (*_GROUP_FIELDS, "requests", "prompt_tokens",
                                                            "completion_tokens"))  # fmt: skip
    conflict = ", ".join(connection.ops.quote_name(c) for c in _GROUP_FIELDS)
    sums = ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" for c in ("requests", "prompt_tokens", "completion_tokens")
    )
    # INSERT ... ON CONFLICT DO UPDATE: SQLite 3.24+ and PostgreSQL 9.5+ both speak it.
    sql = f"INSERT INTO {table} ({cols}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT ({conflict}) DO UPDATE SET {sums}"  # noqa: S608, E501
    params = [
        (connection.ops.adapt_datetimefield_value(g[0]), g[1], g[2], g[3], g[4], g[5], *v)
        for g, v in groups.items()
    ]
    with connection.cursor() as cur:
        cur.executemany(sql, params)


def rollup_add(rows: Sequence[RequestLog]) -> int:
    """Count freshly written request rows into the hourly rollups (call in their transaction)."""
    groups: dict[Group, list[int]] = {}
    for r in rows:
        key = (hour_of(r.created_at), r.username, r.requested_model, r.backend, r.status,
               is_ok(r.status, r.error_type))  # fmt: skip
        v = groups.setdefault(key, [0, 0, 0])
        v[0] += 1
        v[1] += r.prompt_tokens or 0
        v[2] += r.completion_tokens or 0
    _upsert(groups)
    from mlxmanager.usage.services import usage_add

    usage_add(rows)  # the usage rollup (per user, key, model, backend; cached tokens too)
    return len(groups)


def rollup_rebuild(*, since: datetime | None = None, chunk: int = 5000) -> int:
    """Recompute the rollups from the request rows (from `since`'s hour on, or all of them):
    for rows written around the recorder, e.g. imports, benchmarks and the migration."""
    ok = Q(status__lt=400, error_type="")
    qs = RequestLog.objects.all()
    start = hour_of(since) if since is not None else None
    if start is not None:
        qs = qs.filter(created_at__gte=start)
    grouped = (
        qs.annotate(bucket=TruncHour("created_at"))
        .values("bucket", "username", "requested_model", "backend", "status")
        .annotate(
            n_ok=Count("id", filter=ok),
            n_bad=Count("id", filter=~ok),
            p_ok=Sum("prompt_tokens", filter=ok),
            p_bad=Sum("prompt_tokens", filter=~ok),
            c_ok=Sum("completion_tokens", filter=ok),
            c_bad=Sum("completion_tokens", filter=~ok),
        )
        .order_by()
    )
    written = 0
    with transaction.atomic():
        old = RequestHourly.objects.all()
        if start is not None:
            old = old.filter(bucket__gte=start)
        old.delete()
        groups: dict[Group, list[int]] = {}
        for g in grouped.iterator(chunk_size=chunk):
            for flag, n, p, c in (
                (True, g["n_ok"], g["p_ok"], g["c_ok"]),
                (False, g["n_bad"], g["p_bad"], g["c_bad"]),
            ):
                if n:
                    key = (
                        hour_of(g["bucket"]),
                        g["username"],
                        g["requested_model"],
                        g["backend"],
                        g["status"],
                        flag,
                    )
                    groups[key] = [n, p or 0, c or 0]
            if len(groups) >= chunk:
                _upsert(groups)
                written += len(groups)
                groups.clear()
        _upsert(groups)
        written += len(groups)
        from mlxmanager.usage.models import UsageHourly
        from mlxmanager.usage.services import usage_rebuild

        # (skipped in audit's own migration, which runs before the usage table exists)
        if UsageHourly._meta.db_table in connection.introspection.table_names():
            usage_rebuild(since=since, chunk=chunk)
    return written


def rollup_prune(cutoff: datetime) -> int:
    """Drop rollup hours that ended before `cutoff` (the request rows are gone too)."""
    from mlxmanager.usage.services import usage_prune

    usage_prune(cutoff)
    return RequestHourly.objects.filter(bucket__lt=hour_of(cutoff)).delete()[0]
