"""The audit log in the management API (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema

from mlxmanager.audit import selectors
from mlxmanager.audit.services import action_label
from mlxmanager.permissions import require_admin

router = Router(tags=["audit"])


class RequestOut(Schema):
    id: int
    created_at: datetime
    username: str
    key_prefix: str
    client_ip: str | None
    request_id: str = ""
    endpoint: str
    requested_model: str
    rule: str
    backend: str
    upstream_model: str
    status: int
    error_type: str
    stream: bool
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None
    duration_ms: float
    tokens_per_s: float | None


class RequestPageOut(Schema):
    items: list[RequestOut]
    older: str | None
    newer: str | None


class FilterIn(Schema):
    since: str = ""
    until: str = ""
    user: str = ""
    model: str = ""
    backend: str = ""
    status: str = ""
    before: str = ""
    after: str = ""
    size: int = selectors.PAGE_SIZE


@router.get("/requests", response=RequestPageOut)
def list_requests(request: HttpRequest, q: Query[FilterIn]) -> dict[str, Any]:
    """Newest first; follow `older`/`newer` cursors as `before`/`after`."""
    require_admin(request)
    filters = selectors.parse_filter(q.dict())
    page = selectors.request_page(filters=filters, before=q.before, after=q.after, size=q.size)
    return {"items": page.rows, "older": page.older, "newer": page.newer}


class TotalOut(Schema):
    key: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class BarOut(Schema):
    start: datetime
    requests: int
    errors: int
    tokens: int


class SummaryOut(Schema):
    since: datetime | None
    until: datetime | None
    unit: str
    by_model: list[TotalOut]
    by_user: list[TotalOut]
    timeline: list[BarOut]


def _totals(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [
        {
            "key": r[key],
            "requests": r["requests"],
            "errors": r["errors"],
            "prompt_tokens": r["prompt_tokens"] or 0,
            "completion_tokens": r["completion_tokens"] or 0,
        }
        for r in rows
    ]


@router.get("/summary", response=SummaryOut)
def summary(request: HttpRequest, q: Query[FilterIn]) -> dict[str, Any]:
    """Per-model and per-user totals and requests over time (default window: the last 24 h)."""
    require_admin(request)
    window = selectors.summary_window(selectors.parse_filter(q.dict()), now=timezone.now())
    bars, unit = selectors.timeline(window)
    by_model, by_user = selectors.totals(window)
    return {
        "since": window.since,
        "until": window.until,
        "unit": unit,
        "by_model": _totals(by_model, "requested_model"),
        "by_user": _totals(by_user, "username"),
        "timeline": [b.__dict__ for b in bars],
    }


class ActionOut(Schema):
    id: int
    created_at: datetime
    actor_name: str
    action: str
    label: str
    object_type: str
    object_id: str
    object_repr: str
    data: dict[str, Any]


@router.get("/actions", response=list[ActionOut])
def list_actions(request: HttpRequest, before: int | None = None) -> list[dict[str, Any]]:
    require_admin(request)
    return [
        {
            **{f: getattr(a, f) for f in ActionOut.model_fields if f != "label"},
            "label": action_label(a.action),
        }
        for a in selectors.action_page(before=before)
    ]
