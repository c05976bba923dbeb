"""The usage figures against known audit rows: tokens per day/month and per user, key, model,
backend; spend (cloud prices) and saved (local cloud-equivalent prices); the CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from mlxmanager.errors import DomainError
from mlxmanager.usage import selectors, services
from mlxmanager.usage.models import UsageHourly
from tests.mlxmanager.audit.factories import rows

D1 = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
D2 = datetime(2026, 4, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def traffic(boss, member) -> None:  # type: ignore[no-untyped-def]
    # member, key 5: 3 local requests on D1 (1000 in of which 400 cached, 100 out each)
    rows(3, start=D1, user_id=member.pk, username="member", api_key_id=5, key_prefix="mk-aaaa",
         requested_model="qwen", backend="local:qwen", prompt_tokens=1000, cached_tokens=400,
         completion_tokens=100)  # fmt: skip
    # member, key 5: 2 cloud requests on D2 (2000 in, 0 cached, 500 out each)
    rows(2, start=D2, user_id=member.pk, username="member", api_key_id=5, key_prefix="mk-aaaa",
         requested_model="gpt-x", backend="cloud:openai", prompt_tokens=2000, cached_tokens=0,
         completion_tokens=500)  # fmt: skip
    # boss, no key (playground): 1 local request on D2
    rows(1, start=D2, user_id=boss.pk, username="boss", requested_model="qwen", backend="local:qwen",
         prompt_tokens=50, cached_tokens=0, completion_tokens=10)  # fmt: skip
    services.set_price("cloud:openai", input_per_m="2.5", cached_per_m="1.25", output_per_m="10")
    services.set_price("local:qwen", input_per_m="1", cached_per_m="0.5", output_per_m="4")


def f(**kw: str) -> selectors.UsageFilter:
    return selectors.parse_filter({"from": "2026-03-01", "to": "2026-04-30", **kw})


def test_rollup_keeps_keys_and_cached_tokens(traffic: None) -> None:
    assert UsageHourly.objects.count() == 3
    row = UsageHourly.objects.get(backend="local:qwen", api_key_id=5)
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (3, 3000, 1200, 300)
    assert row.key_prefix == "mk-aaaa" and row.bucket == D1


def test_per_day_by_backend_spend_and_saved(traffic: None) -> None:
    rep = selectors.report(f(by="backend"), today=date(2026, 4, 30))
    cells = {(r.period, r.group): r for r in rep.rows}
    local_d1 = cells[(date(2026, 3, 30), "local:qwen")]
    assert (local_d1.input_tokens, local_d1.cached_tokens, local_d1.output_tokens) == (1800, 1200, 300)
    # saved: (1800 × 1 + 1200 × 0.5 + 300 × 4) / 1M = 0.0036
    assert local_d1.saved == Decimal("0.0036") and local_d1.spend == 0
    cloud_d2 = cells[(date(2026, 4, 2), "cloud:openai")]
    # spend: (4000 × 2.5 + 0 + 1000 × 10) / 1M = 0.02
    assert cloud_d2.spend == Decimal("0.02") and cloud_d2.saved == 0
    # boss's playground request: (50 × 1 + 10 × 4) / 1M
    assert cells[(date(2026, 4, 2), "local:qwen")].saved == Decimal("0.00009")
    assert rep.total.requests == 6
    assert rep.total.spend == Decimal("0.02") and rep.total.saved == Decimal("0.00369")
    assert (rep.total.input_tokens, rep.total.cached_tokens, rep.total.output_tokens) == (5850, 1200, 1310)
    # The chart's series covers every day of the window, zeros between.
    assert len(rep.series) == 61 and sum(r.tokens for r in rep.series) == rep.total.tokens


def test_per_month_by_user_and_by_key(traffic: None) -> None:
    rep = selectors.report(f(period="month", by="user"), today=date(2026, 4, 30))
    cells = {(r.period, r.group): r.tokens for r in rep.rows}
    assert cells == {(date(2026, 3, 1), "member"): 3300, (date(2026, 4, 1), "member"): 5000,
                     (date(2026, 4, 1), "boss"): 60}  # fmt: skip
    by_key = selectors.report(f(period="month", by="key"), today=date(2026, 4, 30))
    assert {r.group: r.requests for r in by_key.totals} == {"mk-aaaa": 5, "": 1}


def test_member_sees_only_their_own(traffic: None, member) -> None:  # type: ignore[no-untyped-def]
    rep = selectors.report(f(by="user"), user_id=member.pk, today=date(2026, 4, 30))
    assert {r.group for r in rep.totals} == {"member"} and rep.total.requests == 5


def test_csv(traffic: None) -> None:
    rep = selectors.report(f(by="model"), today=date(2026, 4, 30))
    lines = list(csv.reader(io.StringIO(selectors.csv_text(rep))))
    assert lines[0] == selectors.CSV_HEADER
    assert ["2026-04-02", "model", "gpt-x", "2", "4000", "0", "1000", "5000", "0.0200", "0.0000"] in lines
    assert ["2026-03-30", "model", "qwen", "3", "1800", "1200", "300", "3300", "0.0000", "0.0036"] in lines
    assert len(lines) == 4


@pytest.mark.parametrize(
    "params",
    [{"period": "week"}, {"by": "colour"}, {"from": "yesterday"}, {"from": "2026-02-01", "to": "2026-01-01"}],
)
def test_bad_filters_are_clear_errors(params: dict[str, str]) -> None:
    with pytest.raises(DomainError):
        selectors.parse_filter(params)


def test_default_window_is_thirty_days_or_twelve_months() -> None:
    today = date(2026, 4, 30)
    assert selectors.UsageFilter().window(today) == (today - timedelta(days=29), today)
    assert selectors.UsageFilter(period="month").window(today) == (date(2025, 5, 1), today)
