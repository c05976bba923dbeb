"""Reads: the request log with filters and keyset pagination, totals, the chart, export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from mlxmanager.audit.models import AdminAction, RequestHourly, RequestLog
from mlxmanager.errors import DomainError

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
EXPORT_FIELDS = (
    "id",
    "created_at",
    "username",
    "key_prefix",
    "client_ip",
    "request_id",
    "endpoint",
    "requested_model",
    "rule",
    "backend",
    "upstream_model",
    "status",
    "error_type",
    "stream",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "ttft_ms",
    "duration_ms",
    "tokens_per_s",
)


@dataclass(frozen=True)
class RequestFilter:
    since: datetime | None = None
    until: datetime | None = None
    user: str = ""
    model: str = ""
    backend: str = ""
    status: str = ""  # "", "ok", "error" or an HTTP status code

    def apply(self, qs: QuerySet[RequestLog]) -> QuerySet[RequestLog]:
        if self.since is not None:
            qs = qs.filter(created_at__gte=self.since)
        if self.until is not None:
            qs = qs.filter(created_at__lt=self.until)
        if self.user:
            qs = qs.filter(username=self.user)
        if self.model:
            qs = qs.filter(requested_model=self.model)
        if self.backend:
            qs = qs.filter(backend=self.backend)
        if self.status == "ok":
            qs = qs.filter(status__lt=400, error_type="")
        elif self.status == "error":
            qs = qs.filter(Q(status__gte=400) | ~Q(error_type=""))
        elif self.status:
            qs = qs.filter(status=int(self.status))
        return qs

    def query(self) -> dict[str, str]:
        """The filter as query parameters (for links that keep it)."""
        out = {
            "since": _fmt_dt(self.since),
            "until": _fmt_dt(self.until),
            "user": self.user,
            "model": self.model,
            "backend": self.backend,
            "status": self.status,
        }
        return {k: v for k, v in out.items() if v}


def _fmt_dt(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if value else ""


def _parse_dt(raw: str, name: str) -> datetime | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise DomainError(f"'{raw[:40]}' is not a date and time (use 2025-01-31T13:00)", param=name) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_filter(params: Any) -> RequestFilter:
    """A filter from query parameters (a QueryDict or a dict); bad values raise DomainError."""
    status = (params.get("status") or "").strip()
    if status and status not in ("ok", "error") and not (status.isdigit() and 100 <= int(status) <= 599):
        raise DomainError("status must be ok, error or an HTTP status code", param="status")
    since = _parse_dt(params.get("since", ""), "since")
    until = _parse_dt(params.get("until", ""), "until")
    if since is not None and until is not None and until <= since:
        raise DomainError(
            f"'To' ({_fmt_dt(until).replace('T', ' ')}) must be later than 'From' "
            f"({_fmt_dt(since).replace('T', ' ')}); no request can match that range",
            param="until",
        )
    return RequestFilter(
        since=since,
        until=until,
        user=(params.get("user") or "").strip()[:150],
        model=(params.get("model") or "").strip()[:256],
        backend=(params.get("backend") or "").strip()[:120],
        status=status,
    )


# ---- keyset pagination -------------------------------------------------------------


def cursor_of(row: RequestLog) -> str:
    return f"{int(row.created_at.timestamp() * 1_000_000)}-{row.id}"


def _parse_cursor(raw: str, name: str) -> tuple[datetime, int]:
    try:
        micros, _, pk = raw.partition("-")
        when = datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC)
        return when, int(pk)
    except (ValueError, OverflowError, OSError) as exc:
        raise DomainError("invalid page cursor", param=name) from exc


@dataclass
class Page:
    rows: list[RequestLog]
    older: str | None = None  # cursor for the next (older) page
    newer: str | None = None  # cursor for the previous (newer) page
    filters: RequestFilter = field(default_factory=RequestFilter)


def request_page(*, filters: RequestFilter, before: str = "", after: str = "", size: int = PAGE_SIZE) -> Page:
    """Newest first. One query whatever the table size: it walks a (…, created_at, id) index.

    `before` gives the rows older than a cursor, `after` the rows newer than one.
    """
    size = max(1, min(size, MAX_PAGE_SIZE))
    qs = filters.apply(RequestLog.objects.all())
    if after:
        when, pk = _parse_cursor(after, "after")
        qs = qs.filter(created_at__gte=when).exclude(created_at=when, id__lte=pk)
        rows = list(qs.order_by("created_at", "id")[: size + 1])
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        return Page(
            rows=rows,
            older=cursor_of(rows[-1]) if rows else None,
            newer=cursor_of(rows[0]) if rows and more_newer else None,
            filters=filters,
        )
    if before:
        when, pk = _parse_cursor(before, "before")
        # `<=` plus an exclusion instead of an OR: the index range scan stays a range scan.
        qs = qs.filter(created_at__lte=when).exclude(created_at=when, id__gte=pk)
    rows = list(qs.order_by("-created_at", "-id")[: size + 1])
    more_older = len(rows) > size
    rows = rows[:size]
    return Page(
        rows=rows,
        older=cursor_of(rows[-1]) if rows and more_older else None,
        newer=cursor_of(rows[0]) if rows and before else None,
        filters=filters,
    )


# ---- totals and the chart ------------------------------------------------------------

DEFAULT_SUMMARY_WINDOW = timedelta(hours=24)


def summary_window(filters: RequestFilter, *, now: datetime | None = None) -> RequestFilter:
    """Totals are computed over a bounded window: the filter's, or the last 24 hours."""
    if filters.since is not None:
        return filters
    now = now or timezone.now()
    return RequestFilter(
        since=(filters.until or now) - DEFAULT_SUMMARY_WINDOW,
        until=filters.until,
        user=filters.user,
        model=filters.model,
        backend=filters.backend,
        status=filters.status,
    )


# Totals and the chart read whole hours from the hourly rollups (RequestHourly) and only
# the partial hours at the window's edges from the request rows (two short time ranges on
# the created_at index): a handful of rows per hour, whatever the traffic. At most three
# queries for both totals tables, three for the chart.


@dataclass(frozen=True)
class _Split:
    full: tuple[datetime | None, datetime] | None  # [start, end) of whole hours, from the rollups
    edges: list[Q]  # at most two disjoint time ranges, from the request rows


def _split(filters: RequestFilter, *, now: datetime | None = None) -> _Split:
    since, until = filters.since, filters.until
    end_bound = until or (now or timezone.now())
    h2 = end_bound.astimezone(UTC).replace(minute=0, second=0, microsecond=0)  # whole hours end here
    h1: datetime | None = None
    if since is not None:
        h1 = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if h1 < since:
            h1 += timedelta(hours=1)
    if h1 is not None and h1 >= h2:  # less than one whole hour: the rows themselves
        q = Q(created_at__gte=since) if since is not None else Q()
        return _Split(None, [q & Q(created_at__lt=until) if until is not None else q])
    edges = [Q(created_at__gte=h2) if until is None else Q(created_at__gte=h2, created_at__lt=until)]
    if since is not None and h1 is not None and h1 > since:
        edges.append(Q(created_at__gte=since, created_at__lt=h1))
    return _Split((h1, h2), edges)


def _dims(filters: RequestFilter) -> RequestFilter:
    return RequestFilter(
        user=filters.user, model=filters.model, backend=filters.backend, status=filters.status
    )


def _rollups(filters: RequestFilter, full: tuple[datetime | None, datetime]) -> QuerySet[RequestHourly]:
    start, end = full
    qs = RequestHourly.objects.filter(bucket__lt=end)
    if start is not None:
        qs = qs.filter(bucket__gte=start)
    if filters.user:
        qs = qs.filter(username=filters.user)
    if filters.model:
        qs = qs.filter(requested_model=filters.model)
    if filters.backend:
        qs = qs.filter(backend=filters.backend)
    if filters.status == "ok":
        qs = qs.filter(ok=True)
    elif filters.status == "error":
        qs = qs.filter(ok=False)
    elif filters.status:
        qs = qs.filter(status=int(filters.status))
    return qs


_ERROR = Q(status__gte=400) | ~Q(error_type="")


def _grouped(filters: RequestFilter, split: _Split, by: tuple[str, ...]) -> list[dict[str, Any]]:
    """(group, n=requests, e=errors, p=prompt, c=completion tokens) rows from the rollups and
    the edge rows; `by=("bucket",)` groups by hour (no date function runs on the rollups)."""
    out: list[dict[str, Any]] = []
    hourly = by == ("bucket",)
    if split.full is not None:
        out += (
            _rollups(filters, split.full)
            .values(*by)
            .annotate(
                n=Sum("requests"), e=Sum("requests", filter=Q(ok=False)), p=Sum("prompt_tokens"),
                c=Sum("completion_tokens"),
            )
            .order_by()
        )  # fmt: skip
    dims = _dims(filters)
    for edge in split.edges:
        rows = dims.apply(RequestLog.objects.filter(edge))
        if hourly:
            rows = rows.annotate(bucket=TruncHour("created_at"))  # type: ignore[no-redef]
        out += (
            rows.values(*by)
            .annotate(
                n=Count("id"),
                e=Count("id", filter=_ERROR),
                p=Sum("prompt_tokens"),
                c=Sum("completion_tokens"),
            )
            .order_by()
        )
    return out


def _top(rows: list[dict[str, Any]], by: str, limit: int) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        acc = merged.setdefault(
            r[by], {by: r[by], "requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
        )
        acc["requests"] += r["n"] or 0
        acc["errors"] += r["e"] or 0
        acc["prompt_tokens"] += r["p"] or 0
        acc["completion_tokens"] += r["c"] or 0
    out = [v for v in merged.values() if v["requests"]]
    out.sort(key=lambda v: (-v["requests"], v[by]))
    return out[:limit]


def totals(filters: RequestFilter, *, limit: int = 20) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-model and per-user totals of the window, from one pass grouped by both."""
    rows = _grouped(filters, _split(filters), ("requested_model", "username"))
    return _top(rows, "requested_model", limit), _top(rows, "username", limit)


def totals_by_model(filters: RequestFilter, *, limit: int = 20) -> list[dict[str, Any]]:
    return _top(_grouped(filters, _split(filters), ("requested_model",)), "requested_model", limit)


def totals_by_user(filters: RequestFilter, *, limit: int = 20) -> list[dict[str, Any]]:
    return _top(_grouped(filters, _split(filters), ("username",)), "username", limit)


@dataclass(frozen=True)
class Bar:
    start: datetime
    requests: int
    errors: int
    tokens: int


def timeline(filters: RequestFilter, *, now: datetime | None = None) -> tuple[list[Bar], str]:
    """Requests per hour (per day over windows longer than 3 days), gaps filled with zeros."""
    now = now or timezone.now()
    since = filters.since or now - DEFAULT_SUMMARY_WINDOW
    until = filters.until or now
    daily = until - since > timedelta(days=3)
    step = timedelta(days=1) if daily else timedelta(hours=1)
    window = RequestFilter(since=since, until=filters.until, user=filters.user, model=filters.model,
                           backend=filters.backend, status=filters.status)  # fmt: skip
    found: dict[datetime, list[int]] = {}
    for r in _grouped(window, _split(window, now=now), ("bucket",)):
        at = r["bucket"].astimezone(UTC)
        acc = found.setdefault(at.replace(hour=0) if daily else at, [0, 0, 0])
        acc[0] += r["n"] or 0
        acc[1] += r["e"] or 0
        acc[2] += r["c"] or 0
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if daily:
        start = start.replace(hour=0)
    bars: list[Bar] = []
    at = start
    while at < until and len(bars) < 400:
        n, e, c = found.get(at, (0, 0, 0))
        bars.append(Bar(at, n, e, c))
        at += step
    return bars, "day" if daily else "hour"


def chart_svg_bars(bars: list[Bar], *, width: int = 720, height: int = 120) -> list[dict[str, Any]]:
    """Bar geometry for the SVG chart (the template draws it; no JS)."""
    if not bars:
        return []
    peak = max(b.requests for b in bars) or 1
    slot = width / len(bars)
    out = []
    for i, b in enumerate(bars):
        h = round(b.requests / peak * (height - 14), 1)
        eh = round(b.errors / peak * (height - 14), 1)
        out.append(
            {
                "x": round(i * slot, 1),
                "w": max(round(slot - 1, 1), 0.5),
                "y": round(height - h, 1),
                "h": h,
                "ey": round(height - eh, 1),
                "eh": eh,
                "bar": b,
            }
        )
    return out


# ---- export and the live tail -------------------------------------------------------


def _value(row: RequestLog, name: str) -> Any:
    value = getattr(row, name)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, float):
        return round(value, 3)
    return value


# A spreadsheet opening the CSV runs a cell that starts with one of these as a formula
# (=HYPERLINK(...) exfiltrates, =cmd|... runs commands in old Excel): such cells get a leading
# single quote, which spreadsheets show as text (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


async def export_rows(filters: RequestFilter, fmt: str) -> AsyncIterator[bytes]:
    """The filtered log, newest first, streamed as CSV or JSON Lines in chunks."""
    qs = filters.apply(RequestLog.objects.all()).order_by("-created_at", "-id").only(*EXPORT_FIELDS)
    buf = io.StringIO()
    writer = csv.writer(buf) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_FIELDS)
    n = 0
    async for row in qs.aiterator(chunk_size=2000):
        values = [_value(row, f) for f in EXPORT_FIELDS]
        if writer is not None:
            writer.writerow(["" if v is None else csv_safe(v) for v in values])
        else:
            buf.write(json.dumps(dict(zip(EXPORT_FIELDS, values, strict=True)), separators=(",", ":")))
            buf.write("\n")
        n += 1
        if n % 2000 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def live_row(row: RequestLog) -> dict[str, Any]:
    """A flushed row as plain values (channel layers carry msgpack, not model instances)."""
    return {f: _value(row, f) for f in EXPORT_FIELDS}


@dataclass(frozen=True)
class ActionFilter:
    """Admin-changes filters: who (actor name, "system" for blank), which object (its type, or
    words of its name), what (an action code)."""

    actor: str = ""
    object: str = ""
    action: str = ""

    def apply(self, qs: QuerySet[AdminAction]) -> QuerySet[AdminAction]:
        if self.actor:
            qs = qs.filter(actor_name="" if self.actor == "system" else self.actor)
        if self.object:
            qs = qs.filter(
                Q(object_type=self.object) | Q(object_repr__icontains=self.object) | Q(object_id=self.object)
            )
        if self.action:
            qs = qs.filter(action=self.action)
        return qs

    def query(self) -> dict[str, str]:
        return {
            k: v for k, v in (("actor", self.actor), ("object", self.object), ("action", self.action)) if v
        }


def parse_action_filter(params: Any) -> ActionFilter:
    from mlxmanager.audit.services import ACTIONS

    action = (params.get("action") or "").strip()
    if action and action not in ACTIONS:
        raise DomainError(f"'{action[:60]}' is not an audit action", param="action")
    return ActionFilter(
        actor=(params.get("actor") or "").strip()[:150],
        object=(params.get("object") or "").strip()[:200],
        action=action,
    )


def action_page(
    *, before: int | None = None, size: int = 50, filters: ActionFilter | None = None
) -> list[AdminAction]:
    qs = (filters or ActionFilter()).apply(AdminAction.objects.all())
    if before:
        qs = qs.filter(id__lt=before)
    return list(qs.order_by("-id")[: max(1, min(size, MAX_PAGE_SIZE))])


def action_actors() -> list[str]:
    """Who has changed anything (for the actor filter's choices); "system" for blank."""
    names = AdminAction.objects.order_by().values_list("actor_name", flat=True).distinct()
    return sorted({n or "system" for n in names[:500]})


def action_object_types() -> list[str]:
    return sorted(set(AdminAction.objects.order_by().values_list("object_type", flat=True).distinct()[:100]))


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str | None  # None: no "before" (a value recorded as-is, e.g. on creation)
    new: str


def _show(value: Any) -> str:
    """A recorded value as a person reads it: no Python reprs (None, True, ['a'], {'k': 1})."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) if value else "(none)"
    if isinstance(value, str):
        try:  # ISO times (how changes() stores datetimes) read as "2025-03-01 12:00:00 UTC"
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
        if len(value) >= 19 and value[10] == "T":
            if when.tzinfo is not None:
                when = when.astimezone(UTC)
            return when.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if when.tzinfo else "")
        return value
    return str(value)


def field_changes(data: Any, action: str = "") -> list[FieldChange]:
    """An entry's data, field by field. `{field: [old, new]}` (what `changes()` records for a
    change) reads as old → new; a creation's `[None, value]` and plain values as the value."""
    if not isinstance(data, dict):
        return [FieldChange("value", None, _show(data))] if data not in (None, "", {}) else []
    is_change = action.endswith((".changed", ".secret_replaced"))
    out = []
    for key, value in data.items():
        pair = isinstance(value, list) and len(value) == 2
        if pair and value[0] is None and not is_change:
            out.append(FieldChange(str(key), None, _show(value[1])))
        elif pair and is_change:
            out.append(FieldChange(str(key), _show(value[0]), _show(value[1])))
        else:
            out.append(FieldChange(str(key), None, _show(value)))
    return out
