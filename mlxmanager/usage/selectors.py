"""Reads of usage: tokens (input, cached, output), spend and savings per user, key, model or
backend, per UTC day or month, from the usage rollup (mlxmanager/usage/models.py).

input = prompt tokens that were not cached; cached = prompt tokens read from a cache; output =
completion tokens. Spend = what cloud backends cost at their price; saved = what local
backends would have cost at their cloud-equivalent price.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDay, TruncMonth

from mlxmanager.errors import DomainError
from mlxmanager.usage import budgets
from mlxmanager.usage.models import UsageHourly

PERIODS = ("day", "month")
GROUPS = {"user": "username", "key": "key_prefix", "model": "requested_model", "backend": "backend"}
MAX_DAYS = 366 * 3
CENT = Decimal("0.0001")


@dataclass
class UsageFilter:
    period: str = "day"
    by: str = "model"
    start: date | None = None  # inclusive, UTC
    end: date | None = None  # inclusive, UTC
    user: str = ""  # a username (admins); members always see their own

    def window(self, today: date) -> tuple[date, date]:
        end = self.end or today
        if self.start is not None:
            return self.start, end
        if self.period == "month":
            y, m = end.year, end.month - 11
            while m < 1:
                y, m = y - 1, m + 12
            return date(y, m, 1), end
        return end - timedelta(days=29), end

    def query(self) -> dict[str, str]:
        q = {"period": self.period, "by": self.by}
        if self.start:
            q["from"] = self.start.isoformat()
        if self.end:
            q["to"] = self.end.isoformat()
        if self.user:
            q["user"] = self.user
        return q


def _date(raw: str, name: str) -> date | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise DomainError(f"'{name}' must be a date like 2026-01-31", param=name) from None


def parse_filter(params: Any) -> UsageFilter:
    period = (params.get("period") or "day").strip()
    if period not in PERIODS:
        raise DomainError("'period' must be day or month", param="period")
    by = (params.get("by") or "model").strip()
    if by not in GROUPS:
        raise DomainError("'by' must be one of user, key, model, backend", param="by")
    start, end = _date(params.get("from", ""), "from"), _date(params.get("to", ""), "to")
    if start and end and end < start:
        raise DomainError("'to' is before 'from'", param="to")
    if start and end and (end - start).days > MAX_DAYS:
        raise DomainError(f"a window of at most {MAX_DAYS} days", param="from")
    user = (params.get("user") or "").strip()
    if "\x00" in user:
        raise DomainError("'user' may not contain NUL characters", param="user")
    if len(user) > 150:
        raise DomainError("'user' is at most 150 characters", param="user")
    return UsageFilter(period=period, by=by, start=start, end=end, user=user)


@dataclass
class Row:
    period: date
    group: str
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    spend: Decimal = Decimal(0)
    saved: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_tokens + self.output_tokens

    def add(
        self, requests: int, prompt: int, cached: int, output: int, spend: Decimal, saved: Decimal
    ) -> None:
        cached = min(cached, prompt)
        self.requests += requests
        self.input_tokens += prompt - cached
        self.cached_tokens += cached
        self.output_tokens += output
        self.spend += spend
        self.saved += saved


@dataclass
class Report:
    filters: UsageFilter
    start: date
    end: date
    rows: list[Row]  # per (period, group), newest period first
    totals: list[Row]  # per group over the window, most tokens first
    total: Row
    series: list[Row] = field(default_factory=list)  # per period, oldest first, gaps filled


def cost(
    backend: str, prompt: int, cached: int, output: int, rates: dict[str, budgets.Rates]
) -> tuple[Decimal, Decimal]:
    """(spend, saved) of some tokens on one backend at the prices."""
    r = rates.get(backend)
    if r is None:
        return Decimal(0), Decimal(0)
    amount = r.cost(prompt, cached, output)
    return (amount, Decimal(0)) if backend.startswith("cloud:") else (Decimal(0), amount)


def _scope(filters: UsageFilter, user_id: int | None, start: date, end: date) -> QuerySet[UsageHourly]:
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    qs = UsageHourly.objects.filter(bucket__gte=lo, bucket__lt=hi)
    if user_id is not None:
        qs = qs.filter(user_id=user_id)
    if filters.user:
        qs = qs.filter(username=filters.user)
    return qs


def _next(d: date, period: str) -> date:
    if period == "day":
        return d + timedelta(days=1)
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def report(filters: UsageFilter, *, user_id: int | None = None, today: date | None = None) -> Report:
    """The usage of everyone (user_id None: admins) or of one user, in the filter's window."""
    today = today or datetime.now(UTC).date()
    start, end = filters.window(today)
    if filters.period == "month":
        start = start.replace(day=1)
    trunc = TruncDay if filters.period == "day" else TruncMonth
    dim = GROUPS[filters.by]
    grouped = (
        _scope(filters, user_id, start, end)
        .annotate(at=trunc("bucket", tzinfo=UTC))
        .values("at", dim, "backend")
        .annotate(
            n=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("cached_tokens"), o=Sum("completion_tokens")
        )
        .order_by()
    )
    rates = budgets.prices()
    cells: dict[tuple[date, str], Row] = {}
    per_group: dict[str, Row] = {}
    per_period: dict[date, Row] = {}
    total = Row(period=start, group="all")
    for g in grouped:
        at = g["at"].astimezone(UTC).date() if isinstance(g["at"], datetime) else g["at"]
        name = g[dim] or ""
        spend, saved = cost(g["backend"], g["p"] or 0, g["c"] or 0, g["o"] or 0, rates)
        figures = (g["n"] or 0, g["p"] or 0, g["c"] or 0, g["o"] or 0, spend, saved)
        cells.setdefault((at, name), Row(period=at, group=name)).add(*figures)
        per_group.setdefault(name, Row(period=start, group=name)).add(*figures)
        per_period.setdefault(at, Row(period=at, group="all")).add(*figures)
        total.add(*figures)
    rows = sorted(cells.values(), key=lambda r: (-r.period.toordinal(), -r.tokens, r.group))
    totals = sorted(per_group.values(), key=lambda r: (-r.tokens, r.group))
    series: list[Row] = []
    at = start
    while at <= end and len(series) < 400:
        series.append(per_period.get(at, Row(period=at, group="all")))
        at = _next(at, filters.period)
    return Report(filters, start, end, rows, totals, total, series)


def chart(series: list[Row], *, width: int = 720, height: int = 140) -> list[dict[str, Any]]:
    """Stacked bars (input, cached, output tokens) per period, for the SVG the template draws."""
    if not series:
        return []
    peak = max(r.tokens for r in series) or 1
    slot = width / len(series)
    usable = height - 14
    out = []
    for i, r in enumerate(series):
        hi, hc, ho = (round(v / peak * usable, 1) for v in (r.input_tokens, r.cached_tokens, r.output_tokens))
        out.append({"x": round(i * slot, 1), "w": max(round(slot - 1, 1), 0.5), "row": r,
                    "yi": round(height - hi, 1), "hi": hi,
                    "yc": round(height - hi - hc, 1), "hc": hc,
                    "yo": round(height - hi - hc - ho, 1), "ho": ho})  # fmt: skip
    return out


def money(d: Decimal) -> str:
    return str(d.quantize(CENT))


CSV_HEADER = ["period", "group_by", "group", "requests", "input_tokens", "cached_tokens", "output_tokens",
              "total_tokens", "spend_usd", "saved_usd"]  # fmt: skip


def csv_text(rep: Report) -> str:
    from mlxmanager.audit.selectors import csv_safe

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    fmt = "%Y-%m-%d" if rep.filters.period == "day" else "%Y-%m"
    for r in rep.rows:
        w.writerow([r.period.strftime(fmt), rep.filters.by, csv_safe(r.group), r.requests, r.input_tokens,
                    r.cached_tokens, r.output_tokens, r.tokens, money(r.spend), money(r.saved)])  # fmt: skip
    return buf.getvalue()


def budget_lines(user: Any) -> list[budgets.Status]:
    """Budget lines to show: an admin sees everyone's, a member their own and their keys'."""
    from mlxmanager.accounts.models import ApiKey
    from mlxmanager.usage.models import Budget

    qs = Budget.objects.select_related("user", "api_key", "api_key__user")
    if not user.is_staff:
        from django.db.models import Q

        qs = qs.filter(Q(user_id=user.pk) | Q(api_key__user_id=user.pk))
    out: list[budgets.Status] = []
    for b in qs:
        if b.user is not None:
            out += budgets.statuses("user", b.user.pk, b.user.username)
        elif b.api_key is not None:
            key: ApiKey = b.api_key
            out += budgets.statuses("key", key.pk, f"{key.name} ({key.prefix}…) of {key.user.username}")
    return out
