"""Per-key limits on the gateway's hot path: requests per minute, tokens per day, models.

Counters live in the web process (no query per request): a sliding one-minute window of
request times per key, and the key's tokens for the current UTC day, seeded once a day from
the audit log and then advanced as each request's audit row is recorded (streams count when
they end). With several web processes each one counts its own traffic (documented in
docs/security.md); the audit log stays the truth.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta

from asgiref.sync import sync_to_async
from django.db.models import Sum

from mlxmanager.accounts.models import ApiKey
from mlxmanager.errors import DomainError, PermissionDenied


class RateLimited(DomainError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


_lock = threading.Lock()
_windows: dict[int, deque[float]] = {}
_tokens: dict[int, tuple[date, int]] = {}
# The same counters per user (all of a user's keys and the playground), and the users' limits,
# read from the database at most every USER_LIMITS_TTL_S.
_user_windows: dict[int, deque[float]] = {}
_user_tokens: dict[int, tuple[date, int]] = {}
_user_limits: dict[int, tuple[float, int | None, int | None]] = {}
USER_LIMITS_TTL_S = 5.0
_clock = time.monotonic


def reset() -> None:
    with _lock:
        _windows.clear()
        _tokens.clear()
        _user_windows.clear()
        _user_tokens.clear()
        _user_limits.clear()


def _today() -> date:
    return datetime.now(UTC).date()


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return math.ceil((midnight - now).total_seconds())


def _tokens_today_from_log(key_id: int, day: date, *, field: str = "api_key_id") -> int:
    from mlxmanager.audit.models import RequestLog

    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    agg = RequestLog.objects.filter(**{field: key_id}, created_at__gte=start).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    return int(agg["p"] or 0) + int(agg["c"] or 0)


async def check_request(key: ApiKey) -> None:
    """Count one request against `key`; raise RateLimited (429) when over a limit."""
    if key.tokens_per_day:
        day = _today()
        seen = _tokens.get(key.pk)
        if seen is None or seen[0] != day:
            used = await sync_to_async(_tokens_today_from_log)(key.pk, day)
            with _lock:
                current = _tokens.get(key.pk)
                if current is None or current[0] != day:
                    _tokens[key.pk] = (day, used)
        used = _tokens[key.pk][1]
        if used >= key.tokens_per_day:
            raise RateLimited(
                f"This API key used its {key.tokens_per_day:,} tokens for today (UTC); "
                "the quota resets at midnight UTC.",
                retry_after=_seconds_to_midnight(),
            )
    if key.rpm_limit:
        now = _clock()
        with _lock:
            window = _windows.setdefault(key.pk, deque())
            while window and now - window[0] >= 60.0:
                window.popleft()
            if len(window) >= key.rpm_limit:
                wait = math.ceil(60.0 - (now - window[0]))
                raise RateLimited(
                    f"This API key is limited to {key.rpm_limit} requests per minute; retry in {wait} s.",
                    retry_after=wait,
                )
            window.append(now)


def check_model(key: ApiKey | None, model: str) -> None:
    if key is not None and not key.allows(model):
        raise ModelNotAllowed(f"This API key may not use the model '{model}'.", param="model")


def _read_user_limits(user_id: int) -> tuple[int | None, int | None]:
    from mlxmanager.accounts.models import UserLimits

    row = UserLimits.objects.filter(user_id=user_id).values_list("rpm_limit", "tokens_per_day").first()
    return (row[0], row[1]) if row else (None, None)


async def user_limits(user_id: int) -> tuple[int | None, int | None]:
    """(requests per minute, tokens per day) of a user, cached briefly: no query per request."""
    now = _clock()
    cached = _user_limits.get(user_id)
    if cached is not None and now - cached[0] < USER_LIMITS_TTL_S:
        return cached[1], cached[2]
    rpm, per_day = await sync_to_async(_read_user_limits)(user_id)
    _user_limits[user_id] = (now, rpm, per_day)
    return rpm, per_day


def forget_user_limits(user_id: int) -> None:
    """A user's limits changed: read them again on the next request."""
    _user_limits.pop(user_id, None)


async def check_user(user_id: int | None) -> None:
    """Count one request against the user's own limits (all their keys and the playground)."""
    if user_id is None:
        return
    rpm, per_day = await user_limits(user_id)
    if per_day:
        day = _today()
        seen = _user_tokens.get(user_id)
        if seen is None or seen[0] != day:
            used = await sync_to_async(_tokens_today_from_log)(user_id, day, field="user_id")
            with _lock:
                current = _user_tokens.get(user_id)
                if current is None or current[0] != day:
                    _user_tokens[user_id] = (day, used)
        if _user_tokens[user_id][1] >= per_day:
            raise RateLimited(
                f"You used your {per_day:,} tokens for today (UTC); the quota resets at midnight UTC.",
                retry_after=_seconds_to_midnight(),
            )
    if rpm:
        now = _clock()
        with _lock:
            window = _user_windows.setdefault(user_id, deque())
            while window and now - window[0] >= 60.0:
                window.popleft()
            if len(window) >= rpm:
                wait = math.ceil(60.0 - (now - window[0]))
                raise RateLimited(
                    f"You are limited to {rpm} requests per minute; retry in {wait} s.", retry_after=wait
                )
            window.append(now)


def _advance(counts: dict[int, tuple[date, int]], owner: int | None, tokens: int, day: date) -> None:
    # Only owners with a day's count (a tokens_per_day limit seen): others are seeded from the log.
    seen = counts.get(owner) if owner is not None else None
    if owner is not None and seen is not None:
        counts[owner] = (day, (seen[1] if seen[0] == day else 0) + tokens)


def add_tokens(key_id: int | None, tokens: int, *, user_id: int | None = None) -> None:
    """Called as each request's audit row is recorded."""
    if tokens <= 0:
        return
    day = _today()
    with _lock:
        _advance(_tokens, key_id, tokens, day)
        _advance(_user_tokens, user_id, tokens, day)
