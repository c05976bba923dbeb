"""Budgets: periods and Retry-After, the check against seeded and advanced counters, spend at
cloud prices, per user and per key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from mlxmanager.usage import budgets, services
from tests.mlxmanager.audit.factories import rows

# The check reads the database from another thread (sync_to_async): committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def audit(**kw: object) -> SimpleNamespace:
    base = {"api_key_id": None, "user_id": None, "backend": "local:m", "prompt_tokens": 0, "cached_tokens": 0,
            "completion_tokens": 0, "created_at": datetime.now(UTC)}  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_periods_and_retry_after() -> None:
    now = datetime(2026, 2, 27, 23, 59, 30, tzinfo=UTC)
    assert (
        budgets.period_label("day", now) == "2026-02-27" and budgets.period_label("month", now) == "2026-02"
    )
    assert budgets.seconds_left("day", now) == 30
    assert budgets.period_end("month", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert budgets.seconds_left("month", now) == 30 + 86400
    dec = datetime(2026, 12, 31, 12, tzinfo=UTC)
    assert budgets.period_end("month", dec) == datetime(2027, 1, 1, tzinfo=UTC)


def test_cost_bills_cached_tokens_at_their_price() -> None:
    r = budgets.Rates(Decimal("3"), Decimal("0.3"), Decimal("15"))
    # 1,000,000 prompt tokens of which 200,000 cached, 100,000 output
    assert r.cost(1_000_000, 200_000, 100_000) == Decimal("2.4") + Decimal("0.06") + Decimal("1.5")
    assert budgets.micro(Decimal("0.0000015")) == 2  # rounded to whole micro-dollars


def test_tokens_per_day_seeded_from_the_rollup_then_advanced(member) -> None:  # type: ignore[no-untyped-def]
    rows(
        1,
        start=datetime.now(UTC),
        user_id=member.pk,
        username="member",
        prompt_tokens=60,
        completion_tokens=20,
    )
    services.set_budget(user_id=member.pk, tokens_per_day=100)
    asyncio.run(budgets.check(None, member.pk))  # 80 used of 100
    budgets.add(audit(user_id=member.pk, prompt_tokens=15, completion_tokens=5))  # 100
    with pytest.raises(budgets.BudgetExceeded) as exc:
        asyncio.run(budgets.check(None, member.pk))
    e = exc.value
    assert e.status == 429 and e.code == "budget_exceeded" and 0 < e.retry_after <= 86400
    assert "100 tokens for today" in e.message
    # Another user is not affected; removing the budget lifts it at once.
    asyncio.run(budgets.check(None, member.pk + 1000))
    services.set_budget(user_id=member.pk)
    asyncio.run(budgets.check(None, member.pk))


def test_key_month_spend_counts_cloud_prices_only(member) -> None:  # type: ignore[no-untyped-def]
    from mlxmanager.accounts.models import ApiKey

    key = ApiKey.objects.create(user=member, name="k", prefix="mk-1", digest="d" * 64)
    services.set_price("cloud:acme", input_per_m="10", cached_per_m="1", output_per_m="20")
    services.set_price("local:m", input_per_m="1000", cached_per_m="0", output_per_m="1000")  # never spend
    services.set_budget(api_key_id=key.pk, spend_per_month="0.05")
    asyncio.run(budgets.check(key.pk, member.pk))
    budgets.add(audit(api_key_id=key.pk, user_id=member.pk, backend="local:m", prompt_tokens=10_000))
    asyncio.run(budgets.check(key.pk, member.pk))  # local: no spend
    # 2,000 input (1,000 cached) + 2,000 output: (1000×10 + 1000×1 + 2000×20)/1M = $0.051
    budgets.add(audit(api_key_id=key.pk, user_id=member.pk, backend="cloud:acme", prompt_tokens=2000,
                      cached_tokens=1000, completion_tokens=2000))  # fmt: skip
    with pytest.raises(budgets.BudgetExceeded) as exc:
        asyncio.run(budgets.check(key.pk, member.pk))
    assert "This API key spent the budget of $0.05" in exc.value.message
    assert exc.value.retry_after > 0
    [line] = budgets.statuses("key", key.pk, "k")
    assert line.what == "spend this month" and line.used == Decimal("0.05") and line.over


def test_month_tokens_and_the_80_percent_warning(member) -> None:  # type: ignore[no-untyped-def]
    services.set_budget(user_id=member.pk, tokens_per_month=1000, tokens_per_day=10_000)
    asyncio.run(budgets.check(None, member.pk))
    budgets.add(audit(user_id=member.pk, prompt_tokens=700, completion_tokens=99))
    lines = {s.what: s for s in budgets.statuses("user", member.pk, "member")}
    assert not lines["tokens this month"].warn
    budgets.add(audit(user_id=member.pk, completion_tokens=1))
    lines = {s.what: s for s in budgets.statuses("user", member.pk, "member")}
    assert lines["tokens this month"].warn and not lines["tokens this month"].over
    assert lines["tokens this month"].percent == 80 and not lines["tokens today"].warn


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_per_day", "0"),
        ("tokens_per_month", "lots"),
        ("spend_per_month", "-1"),
        ("spend_per_month", "NaN"),
    ],
)
def test_bad_budgets_are_refused(member, field: str, value: str) -> None:  # type: ignore[no-untyped-def]
    from mlxmanager.errors import DomainError

    with pytest.raises(DomainError) as exc:
        services.set_budget(user_id=member.pk, **{field: value})
    assert exc.value.param == field


def test_budget_changes_are_audited(boss, member) -> None:  # type: ignore[no-untyped-def]
    from mlxmanager.audit.models import AdminAction

    services.set_budget(user_id=member.pk, tokens_per_day=5, actor=boss)
    services.set_budget(user_id=member.pk, actor=boss)
    assert list(AdminAction.objects.filter(action__startswith="mlxmanager.budget").order_by("id").values_list("action", "actor_name")) == [
        ("mlxmanager.budget.set", "boss"), ("mlxmanager.budget.removed", "boss")]  # fmt: skip
