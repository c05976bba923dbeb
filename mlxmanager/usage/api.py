"""Usage, prices and budgets in the management API.

GET /api/usage: the usage page's figures (admins: everyone's, or one user's with `user`;
members: their own). Prices and budgets: admins change them, members read their own budgets.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema, Status

from mlxmanager.errors import NotFound
from mlxmanager.permissions import admin_auth, is_admin, require_admin
from mlxmanager.usage import selectors, services
from mlxmanager.usage.models import Budget, Price

router = Router(tags=["usage and budgets"])


class UsageQuery(Schema):
    period: str = "day"
    by: str = "model"
    start: str = ""
    end: str = ""
    user: str = ""


class UsageRowOut(Schema):
    period: date
    group: str
    requests: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    total_tokens: int
    spend: Decimal
    saved: Decimal


class UsageOut(Schema):
    period: str
    by: str
    start: date
    end: date
    total: UsageRowOut
    totals: list[UsageRowOut]
    rows: list[UsageRowOut]


def _row(r: selectors.Row) -> dict[str, Any]:
    return {"period": r.period, "group": r.group, "requests": r.requests, "input_tokens": r.input_tokens,
            "cached_tokens": r.cached_tokens, "output_tokens": r.output_tokens, "total_tokens": r.tokens,
            "spend": r.spend.quantize(selectors.CENT), "saved": r.saved.quantize(selectors.CENT)}  # fmt: skip


def _user(request: HttpRequest) -> Any:
    return getattr(request, "auth", None) or request.user


@router.get("/usage", response=UsageOut)
def usage(request: HttpRequest, q: Query[UsageQuery]) -> dict[str, Any]:
    """Tokens (input without cached, cached, output), spend and saved, per UTC day or month and
    per user, key, model or backend. `start`/`end`: dates (YYYY-MM-DD, inclusive)."""
    user = _user(request)
    filters = selectors.parse_filter({"period": q.period, "by": q.by, "from": q.start, "to": q.end,
                                      "user": q.user if is_admin(user) else ""})  # fmt: skip
    rep = selectors.report(filters, user_id=None if is_admin(user) else user.pk)
    return {"period": filters.period, "by": filters.by, "start": rep.start, "end": rep.end,
            "total": _row(rep.total), "totals": [_row(r) for r in rep.totals],
            "rows": [_row(r) for r in rep.rows]}  # fmt: skip


@router.get("/usage.csv")
def usage_csv(request: HttpRequest, q: Query[UsageQuery]) -> HttpResponse:
    """The same figures as CSV (one line per period and group)."""
    user = _user(request)
    filters = selectors.parse_filter({"period": q.period, "by": q.by, "from": q.start, "to": q.end,
                                      "user": q.user if is_admin(user) else ""})  # fmt: skip
    rep = selectors.report(filters, user_id=None if is_admin(user) else user.pk)
    return HttpResponse(selectors.csv_text(rep), content_type="text/csv; charset=utf-8")


class PriceIn(Schema):
    backend: str
    input_per_m: Decimal = Decimal(0)
    cached_per_m: Decimal = Decimal(0)
    output_per_m: Decimal = Decimal(0)


class PriceOut(Schema):
    backend: str
    input_per_m: Decimal
    cached_per_m: Decimal
    output_per_m: Decimal


@router.get("/prices", response=list[PriceOut])
def list_prices(request: HttpRequest) -> list[Price]:
    return list(Price.objects.all())


@router.put("/prices", response=PriceOut, auth=admin_auth("set prices"))
def put_price(request: HttpRequest, body: PriceIn) -> Price:
    """Set the price per 1M tokens of a backend: `cloud:<credential>` or `local:<profile>`."""
    require_admin(request, "set prices")
    return services.set_price(body.backend, input_per_m=body.input_per_m, cached_per_m=body.cached_per_m,
                              output_per_m=body.output_per_m, user=_user(request))  # fmt: skip


@router.delete("/prices", response={204: None}, auth=admin_auth("remove prices"))
def delete_price(request: HttpRequest, backend: str) -> Status[None]:
    require_admin(request, "remove prices")
    services.delete_price(backend, user=_user(request))
    return Status(204, None)


class BudgetIn(Schema):
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    spend_per_month: Decimal | None = None


class BudgetLineOut(Schema):
    what: str
    limit: Decimal
    used: Decimal
    percent: int
    warn: bool
    over: bool


class BudgetOut(Schema):
    user_id: int | None
    api_key_id: int | None
    tokens_per_day: int | None
    tokens_per_month: int | None
    spend_per_month: Decimal | None
    status: list[BudgetLineOut] = []


def _out(b: Budget) -> dict[str, Any]:
    from mlxmanager.usage import budgets

    kind, owner = ("user", b.user_id) if b.user_id else ("key", b.api_key_id)
    lines = budgets.statuses(kind, int(owner or 0), "")
    return {"user_id": b.user_id, "api_key_id": b.api_key_id, "tokens_per_day": b.tokens_per_day,
            "tokens_per_month": b.tokens_per_month, "spend_per_month": b.spend_per_month,
            "status": [{"what": s.what, "limit": s.limit, "used": s.used, "percent": s.percent,
                        "warn": s.warn, "over": s.over} for s in lines]}  # fmt: skip


@router.get("/budgets", response=list[BudgetOut])
def list_budgets(request: HttpRequest) -> list[dict[str, Any]]:
    """Every budget (admins), or a member's own and their keys'."""
    from django.db.models import Q

    user = _user(request)
    qs = Budget.objects.all()
    if not is_admin(user):
        qs = qs.filter(Q(user_id=user.pk) | Q(api_key__user_id=user.pk))
    return [_out(b) for b in qs]


def _set(request: HttpRequest, body: BudgetIn | None, **owner: int) -> Any:
    require_admin(request, "change budgets")
    from django.contrib.auth import get_user_model

    from mlxmanager.accounts.models import ApiKey

    if not all(0 < v < 2**63 for v in owner.values()):
        raise NotFound("no such user or API key", param=next(iter(owner)))
    if "user_id" in owner and not get_user_model().objects.filter(pk=owner["user_id"]).exists():
        raise NotFound(f"no user {owner['user_id']}", param="user_id")
    if "api_key_id" in owner and not ApiKey.objects.filter(pk=owner["api_key_id"]).exists():
        raise NotFound(f"no API key {owner['api_key_id']}", param="key_id")
    b = body or BudgetIn()
    budget = services.set_budget(**owner, tokens_per_day=b.tokens_per_day, tokens_per_month=b.tokens_per_month,
                                 spend_per_month=b.spend_per_month, actor=_user(request))  # fmt: skip
    return budget


@router.put("/budgets/users/{user_id}", response=BudgetOut, auth=admin_auth("change budgets"))
def put_user_budget(request: HttpRequest, user_id: int, body: BudgetIn) -> Any:
    """Set a user's budget (all fields null: remove it; then the answer has all fields null)."""
    b = _set(request, body, user_id=user_id)
    return _out(b) if b is not None else {"user_id": user_id, "api_key_id": None, "tokens_per_day": None,
                                          "tokens_per_month": None, "spend_per_month": None}  # fmt: skip


@router.put("/budgets/keys/{key_id}", response=BudgetOut, auth=admin_auth("change budgets"))
def put_key_budget(request: HttpRequest, key_id: int, body: BudgetIn) -> Any:
    """Set an API key's budget (all fields null: remove it)."""
    b = _set(request, body, api_key_id=key_id)
    return _out(b) if b is not None else {"user_id": None, "api_key_id": key_id, "tokens_per_day": None,
                                          "tokens_per_month": None, "spend_per_month": None}  # fmt: skip
