from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from mlxmanager.audit.models import RequestLog
from mlxmanager.audit.services import rollup_add

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def rows(
    n: int, *, start: datetime = T0, step: timedelta = timedelta(seconds=1), **fields: Any
) -> list[RequestLog]:
    """`n` rows, one `step` apart from `start`, bulk-inserted and counted into the hourly
    rollups (what the recorder's flush does)."""
    base = {"endpoint": "/v1/chat/completions", "requested_model": "m", "status": 200, "username": "u",
            "backend": "local:m", "prompt_tokens": 10, "completion_tokens": 5, "duration_ms": 12.0}  # fmt: skip
    objs = [RequestLog(created_at=start + i * step, **{**base, **fields}) for i in range(n)]
    with transaction.atomic():
        created = RequestLog.objects.bulk_create(objs)
        rollup_add(created)
    return created
