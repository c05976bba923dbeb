"""Budgets on the gateway's hot path: tokens per UTC day or month, spend per UTC month,
for one user (all their keys and the playground) or one API key.

Checked before a request is served (inference.pipeline.serve, next to the limits), fast: the
budgets and prices are read from the database at most every TTL_S; the period's usage lives in
a counter, seeded once per period from the usage rollup and advanced as each request's audit
row is recorded (`add`, called by the recorder like limits.add_tokens). With REDIS_URL set the
counters live in Redis (a hash per owner and period, advanced atomically), so several web
processes share one count and the budget holds across them; without it they live in the
process (one web process, the default).

Spend is what cloud backends cost at their `Price` (per 1M input, cached and output tokens;
input here excludes the cached tokens, which are billed at the cached price). Local backends
never count as spend.
"""

from __future__ import annotations

import calendar
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from mlxmanager.accounts.limits import RateLimited

log = logging.getLogger(__name__)
TTL_S = 5.0
WARN_AT = 0.8  # the pages warn at 80 % of a budget
_clock = time.monotonic


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


@dataclass(frozen=True)
class Limits:
    tokens_per_day: int | None
    tokens_per_month: int | None
    spend_per_month: Decimal | None


@dataclass(frozen=True)
class Rates:
    """Dollars per 1M tokens (input without cached, cached, output)."""

    input: Decimal
    cached: Decimal
    output: Decimal

    def cost(self, prompt: int, cached: int, completion: int) -> Decimal:
        cached = min(cached, prompt)
        return ((prompt - cached) * self.input + cached * self.cached + completion * self.output) / 1_000_000


_lock = threading.Lock()
_budgets: dict[tuple[str, int], tuple[float, Limits | None]] = {}
_prices: tuple[float, dict[str, Rates]] | None = None


def forget() -> None:
    """Budgets or prices changed: read them again on the next request."""
    global _prices
    with _lock:
        _budgets.clear()
        _prices = None


def reset() -> None:
    forget()
    store().clear()


# ---- periods ------------------------------------------------------------------------------


def period_start(period: str, now: datetime) -> datetime:
    day = now.astimezone(UTC).date()
    if period == "month":
        day = day.replace(day=1)
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def period_end(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start + timedelta(days=days)


def period_label(period: str, now: datetime) -> str:
    d: date = period_start(period, now).date()
    return f"{d:%Y-%m-%d}" if period == "day" else f"{d:%Y-%m}"


def seconds_left(period: str, now: datetime) -> int:
    return max(1, math.ceil((period_end(period, now) - now).total_seconds()))


# ---- counters: in the process, or in Redis ------------------------------------------------


class _LocalStore:
    def __init__(self) -> None:
        self._d: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[int, int] | None:
        with self._lock:
            v = self._d.get(key)
            return (v[0], v[1]) if v is not None else None

    def seed(self, key: str, tokens: int, spend: int, ttl: int) -> tuple[int, int]:
        with self._lock:
            v = self._d.setdefault(key, [tokens, spend])
            return v[0], v[1]

    def incr(self, key: str, tokens: int, spend: int) -> None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                v[0] += tokens
                v[1] += spend

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


_INCR_LUA = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hincrby', KEYS[1], 't', ARGV[1])
  redis.call('hincrby', KEYS[1], 's', ARGV[2])
end
return 1
"""


class _RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._incr = self._r.register_script(_INCR_LUA)
        db = settings.DATABASES["default"]
        self._ns = f"mlxm:budget:{db.get('HOST', '')}:{db.get('PORT', '')}:{db.get('NAME', '')}:"

    def get(self, key: str) -> tuple[int, int] | None:
        t, s = self._r.hmget(self._ns + key, ["t", "s"])
        return None if t is None else (int(t), int(s or 0))

    def seed(self, key: str, tokens: int, spend: int, ttl: int) -> tuple[int, int]:
        k = self._ns + key
        pipe = self._r.pipeline()
        pipe.hsetnx(k, "t", tokens)
        pipe.hsetnx(k, "s", spend)
        pipe.expire(k, ttl)
        pipe.hmget(k, ["t", "s"])
        t, s = pipe.execute()[-1]
        return int(t), int(s or 0)

    def incr(self, key: str, tokens: int, spend: int) -> None:
        self._incr(keys=[self._ns + key], args=[tokens, spend])

    def clear(self) -> None:
        for k in self._r.scan_iter(self._ns + "*"):
            self._r.delete(k)


_store: _LocalStore | _RedisStore | None = None


def store() -> _LocalStore | _RedisStore:
    global _store
    if _store is None:
        url = getattr(settings, "MLXM_BUDGET_REDIS_URL", "")
        _store = _RedisStore(url) if url else _LocalStore()
    return _store


# ---- reads --------------------------------------------------------------------------------


def _read_limits(kind: str, owner: int) -> Limits | None:
    from mlxmanager.usage.models import Budget

    field = "user_id" if kind == "user" else "api_key_id"
    b = Budget.objects.filter(**{field: owner}).first()
    if b is None or b.empty:
        return None
    return Limits(b.tokens_per_day, b.tokens_per_month, b.spend_per_month)


def _read_prices() -> dict[str, Rates]:
    from mlxmanager.usage.models import Price

    return {p.backend: Rates(p.input_per_m, p.cached_per_m, p.output_per_m) for p in Price.objects.all()}


def prices() -> dict[str, Rates]:
    global _prices
    now = _clock()
    cached = _prices
    if cached is not None and now - cached[0] < TTL_S:
        return cached[1]
    fresh = _read_prices()
    _prices = (now, fresh)
    return fresh


def limits_of(kind: str, owner: int) -> Limits | None:
    now = _clock()
    cached = _budgets.get((kind, owner))
    if cached is not None and now - cached[0] < TTL_S:
        return cached[1]
    fresh = _read_limits(kind, owner)
    _budgets[(kind, owner)] = (now, fresh)
    return fresh


def micro(amount: Decimal) -> int:
    """Dollars → whole micro-dollars (the counters' unit)."""
    return int((amount * 1_000_000).to_integral_value())


def spend_of(backend: str, prompt: int, cached: int, completion: int, rates: dict[str, Rates]) -> Decimal:
    if not backend.startswith("cloud:"):
        return Decimal(0)
    r = rates.get(backend)
    return r.cost(prompt, cached, completion) if r is not None else Decimal(0)


def _used_from_rollup(kind: str, owner: int, start: datetime) -> tuple[int, int]:
    from django.db.models import Sum

    from mlxmanager.usage.models import UsageHourly

    field = "user_id" if kind == "user" else "api_key_id"
    rows = (
        UsageHourly.objects.filter(**{field: owner}, bucket__gte=start)
        .values("backend")
        .annotate(p=Sum("prompt_tokens"), c=Sum("cached_tokens"), o=Sum("completion_tokens"))
        .order_by()
    )
    rates = prices()
    tokens, spend = 0, Decimal(0)
    for r in rows:
        tokens += (r["p"] or 0) + (r["o"] or 0)
        spend += spend_of(r["backend"], r["p"] or 0, r["c"] or 0, r["o"] or 0, rates)
    return tokens, micro(spend)


def used(kind: str, owner: int, period: str, now: datetime) -> tuple[int, int]:
    """(tokens, micro-dollars) of the owner in the period around `now` (seeded when missing)."""
    key = f"{kind}:{owner}:{period_label(period, now)}"
    s = store()
    got = s.get(key)
    if got is not None:
        return got
    tokens, spend = _used_from_rollup(kind, owner, period_start(period, now))
    ttl = int((period_end(period, now) - now).total_seconds()) + 86400
    return s.seed(key, tokens, spend, ttl)


# ---- the check and the count --------------------------------------------------------------


def _check_sync(owners: list[tuple[str, int]], now: datetime) -> None:
    for kind, owner in owners:
        lim = limits_of(kind, owner)
        if lim is None:
            continue
        whose = "This API key" if kind == "key" else "You"
        if lim.tokens_per_day:
            tokens, _ = used(kind, owner, "day", now)
            if tokens >= lim.tokens_per_day:
                raise BudgetExceeded(
                    f"{whose} used the budget of {lim.tokens_per_day:,} tokens for today (UTC); "
                    "it resets at midnight UTC.",
                    retry_after=seconds_left("day", now),
                )
        if lim.tokens_per_month or lim.spend_per_month:
            if lim.spend_per_month:
                prices()  # fresh prices for `add`, which runs on the event loop (no queries there)
            tokens, spend = used(kind, owner, "month", now)
            if lim.tokens_per_month and tokens >= lim.tokens_per_month:
                raise BudgetExceeded(
                    f"{whose} used the budget of {lim.tokens_per_month:,} tokens for this month (UTC); "
                    "it resets on the 1st at midnight UTC.",
                    retry_after=seconds_left("month", now),
                )
            if lim.spend_per_month and spend >= micro(lim.spend_per_month):
                raise BudgetExceeded(
                    f"{whose} spent the budget of ${lim.spend_per_month} for this month (UTC); "
                    "it resets on the 1st at midnight UTC.",
                    retry_after=seconds_left("month", now),
                )


def _owners(key_id: int | None, user_id: int | None) -> list[tuple[str, int]]:
    owners = []
    if key_id:
        owners.append(("key", key_id))
    if user_id:
        owners.append(("user", user_id))
    return owners


async def check(key_id: int | None, user_id: int | None) -> None:
    """Raise BudgetExceeded (429, Retry-After until the period resets) when over a budget."""
    owners = _owners(key_id, user_id)
    if not owners:
        return
    now = _clock()
    # Fast path: every owner's "no budget" is cached (no thread hop, no query).
    if all((c := _budgets.get(o)) is not None and c[1] is None and now - c[0] < TTL_S for o in owners):
        return
    await sync_to_async(_check_sync)(owners, datetime.now(UTC))


def add(audit: Any) -> None:
    """A request's audit row was recorded: advance its owners' counters (those with a budget)."""
    tokens = max(audit.prompt_tokens, 0) + max(audit.completion_tokens, 0)
    if tokens <= 0:
        return
    owners = [o for o in _owners(audit.api_key_id, audit.user_id) if (c := _budgets.get(o)) and c[1]]
    if not owners:
        return
    try:
        rates = _prices[1] if _prices is not None else {}
        spend = micro(spend_of(audit.backend, audit.prompt_tokens, audit.cached_tokens,
                               audit.completion_tokens, rates))  # fmt: skip
        now = audit.created_at if audit.created_at is not None else datetime.now(UTC)
        s = store()
        for kind, owner in owners:
            for period in ("day", "month"):
                s.incr(
                    f"{kind}:{owner}:{period_label(period, now)}", tokens, spend if period == "month" else 0
                )
    except Exception:  # a budget counter must never fail a request
        log.warning("budget counters: could not count a request", exc_info=True)


# ---- what the pages show ------------------------------------------------------------------


@dataclass
class Status:
    """One budget line: what is allowed, what is used, the share (0..1+)."""

    owner: str  # "user" or "key"
    owner_id: int
    label: str
    what: str  # "tokens today", "tokens this month", "spend this month"
    limit: Decimal
    used: Decimal
    ratio: float

    @property
    def warn(self) -> bool:
        return self.ratio >= WARN_AT

    @property
    def over(self) -> bool:
        return self.ratio >= 1

    @property
    def percent(self) -> int:
        return int(self.ratio * 100)


def statuses(kind: str, owner: int, label: str, *, now: datetime | None = None) -> list[Status]:
    """The budget lines of one owner, with usage (sync: pages and /api)."""
    lim = _read_limits(kind, owner)
    if lim is None:
        return []
    now = now or datetime.now(UTC)
    out: list[Status] = []

    def line(what: str, limit: Decimal, value: Decimal) -> None:
        out.append(Status(kind, owner, label, what, limit, value, float(value / limit) if limit else 0.0))

    if lim.tokens_per_day:
        t, _ = used(kind, owner, "day", now)
        line("tokens today", Decimal(lim.tokens_per_day), Decimal(t))
    if lim.tokens_per_month or lim.spend_per_month:
        t, s = used(kind, owner, "month", now)
        if lim.tokens_per_month:
            line("tokens this month", Decimal(lim.tokens_per_month), Decimal(t))
        if lim.spend_per_month:
            line("spend this month", lim.spend_per_month, (Decimal(s) / 1_000_000).quantize(Decimal("0.01")))
    return out
