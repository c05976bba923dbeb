"""Writes of usage: the usage rollup (called by the audit rollups), prices and budgets."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncHour

from mlxmanager.errors import DomainError, NotFound
from mlxmanager.usage.models import Budget, Price, UsageHourly

Group = tuple[datetime, int, str, int, str, str, str]
_GROUP_FIELDS = ("bucket", "user_id", "username", "api_key_id", "key_prefix", "requested_model", "backend")
_CONFLICT = ("bucket", "user_id", "api_key_id", "requested_model", "backend")
_SUMS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")


def _hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _upsert(groups: dict[Group, list[int]]) -> None:
    if not groups:
        return
    q = connection.ops.quote_name
    table = q(UsageHourly._meta.db_table)
    cols = ", ".join(q(c) for c in (*_GROUP_FIELDS, *_SUMS))
    conflict = ", ".join(q(c) for c in _CONFLICT)
    sums = ", ".join(f"{q(c)} = {table}.{q(c)} + excluded.{q(c)}" for c in _SUMS)
    marks = ", ".join(["%s"] * (len(_GROUP_FIELDS) + len(_SUMS)))
    sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {sums}"  # noqa: S608
    params = [(connection.ops.adapt_datetimefield_value(g[0]), *g[1:], *v) for g, v in groups.items()]
    with connection.cursor() as cur:
        cur.executemany(sql, params)


def usage_add(rows: Iterable[Any]) -> int:
    """Count freshly written RequestLog rows into the usage rollup (in their transaction)."""
    groups: dict[Group, list[int]] = {}
    for r in rows:
        key = (_hour(r.created_at), r.user_id or 0, r.username, r.api_key_id or 0, r.key_prefix,
               r.requested_model, r.backend)  # fmt: skip
        v = groups.setdefault(key, [0, 0, 0, 0])
        v[0] += 1
        v[1] += r.prompt_tokens or 0
        v[2] += r.cached_tokens or 0
        v[3] += r.completion_tokens or 0
    _upsert(groups)
    return len(groups)


def usage_rebuild(*, since: datetime | None = None, chunk: int = 5000) -> int:
    """Recompute the usage rollup from the request rows (from `since`'s hour on, or all)."""
    from mlxmanager.audit.models import RequestLog

    qs = RequestLog.objects.all()
    start = _hour(since) if since is not None else None
    if start is not None:
        qs = qs.filter(created_at__gte=start)
    grouped = (
        qs.annotate(bucket=TruncHour("created_at"))
        .values("bucket", "user_id", "api_key_id", "requested_model", "backend")
        .annotate(n=Count("id"), p=Sum("prompt_tokens"), c=Sum("cached_tokens"), o=Sum("completion_tokens"))
        .order_by()
    )
    names: dict[tuple[int, int], tuple[str, str]] = {}
    written = 0
    with transaction.atomic():
        old = UsageHourly.objects.all()
        if start is not None:
            old = old.filter(bucket__gte=start)
        old.delete()
        groups: dict[Group, list[int]] = {}
        for g in grouped.iterator(chunk_size=chunk):
            ids = (g["user_id"] or 0, g["api_key_id"] or 0)
            if ids not in names:
                row = qs.filter(user_id=g["user_id"], api_key_id=g["api_key_id"]).values_list(
                    "username", "key_prefix"
                )[:1]
                names[ids] = row[0] if row else ("", "")
            username, prefix = names[ids]
            key = (_hour(g["bucket"]), ids[0], username, ids[1], prefix, g["requested_model"], g["backend"])
            groups[key] = [g["n"], g["p"] or 0, g["c"] or 0, g["o"] or 0]
            if len(groups) >= chunk:
                _upsert(groups)
                written += len(groups)
                groups.clear()
        _upsert(groups)
        written += len(groups)
    return written


def usage_prune(cutoff: datetime) -> int:
    return UsageHourly.objects.filter(bucket__lt=_hour(cutoff)).delete()[0]


# ---- prices -------------------------------------------------------------------------------


def valid_backend(backend: str) -> str:
    backend = (backend or "").strip()
    kind, _, name = backend.partition(":")
    if kind not in ("cloud", "local") or not name.strip() or any(ord(ch) < 32 for ch in backend):
        raise DomainError('backend must be "cloud:<credential>" or "local:<profile>"', param="backend")
    if len(backend) > 120:
        raise DomainError("backend is at most 120 characters", param="backend")
    return backend


def _amount(value: Any, name: str, *, places: int = 4) -> Decimal:
    try:
        d = Decimal(str(value))
    except Exception:
        raise DomainError(f"{name} must be a number", param=name) from None
    if not d.is_finite() or d < 0:
        raise DomainError(f"{name} must be a number ≥ 0", param=name)
    if d >= Decimal(10) ** (12 - places):
        raise DomainError(f"{name} is too large", param=name)
    return d.quantize(Decimal(1).scaleb(-places))


def set_price(
    backend: str, *, input_per_m: Any, cached_per_m: Any, output_per_m: Any, user: Any = None
) -> Price:
    from mlxmanager.audit.services import log_action

    backend = valid_backend(backend)
    values = {
        "input_per_m": _amount(input_per_m, "input_per_m"),
        "cached_per_m": _amount(cached_per_m, "cached_per_m"),
        "output_per_m": _amount(output_per_m, "output_per_m"),
    }
    price, created = Price.objects.update_or_create(backend=backend, defaults=values)
    log_action(price, "mlxmanager.price.set", user=user,
               data={"backend": backend, **{k: str(v) for k, v in values.items()}})  # fmt: skip
    from mlxmanager.usage import budgets

    budgets.forget()
    return price


def delete_price(backend: str, *, user: Any = None) -> None:
    from mlxmanager.audit.services import log_action

    price = Price.objects.filter(backend=backend).first()
    if price is None:
        raise NotFound(f"no price for '{backend}'", param="backend")
    log_action(price, "mlxmanager.price.deleted", user=user, data={"backend": backend})
    price.delete()
    from mlxmanager.usage import budgets

    budgets.forget()


# ---- budgets ------------------------------------------------------------------------------


def _tokens(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DomainError(f"{name} must be a whole number", param=name) from None
    if n < 1 or n > 10**15:
        raise DomainError(f"{name} must be between 1 and 10^15 (empty: no budget)", param=name)
    return n


def set_budget(
    *, user_id: int | None = None, api_key_id: int | None = None, tokens_per_day: Any = None,
    tokens_per_month: Any = None, spend_per_month: Any = None, actor: Any = None,
) -> Budget | None:  # fmt: skip
    """Set (or with every field empty, remove) the budget of one user or one API key."""
    from mlxmanager.audit.services import log_action

    values = {
        "tokens_per_day": _tokens(tokens_per_day, "tokens_per_day"),
        "tokens_per_month": _tokens(tokens_per_month, "tokens_per_month"),
        "spend_per_month": None
        if spend_per_month in (None, "")
        else _amount(spend_per_month, "spend_per_month", places=2),
    }
    if values["spend_per_month"] is not None and values["spend_per_month"] <= 0:
        raise DomainError("spend_per_month must be more than 0 (empty: no budget)", param="spend_per_month")
    owner = {"user_id": user_id} if user_id is not None else {"api_key_id": api_key_id}
    budget = Budget.objects.filter(**owner).first()
    data = {k: (str(v) if v is not None else None) for k, v in values.items()}
    from mlxmanager.usage import budgets

    budgets.forget()
    if all(v is None for v in values.values()):
        if budget is not None:
            log_action(budget, "mlxmanager.budget.removed", user=actor, data=owner)
            budget.delete()
        return None
    if budget is None:
        budget = Budget(**owner)
    for k, v in values.items():
        setattr(budget, k, v)
    budget.save()
    log_action(budget, "mlxmanager.budget.set", user=actor, data={**owner, **data})
    return budget
