"""Home page tests: an admin and a member (tests/mlxmanager/people.py), a worker that answers
with a canned health report (no real worker process), and a fixed "now"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from mlxmanager.home import selectors, views
from tests.mlxmanager.people import _fast_hashing_and_no_flusher, boss, boss_client, member, member_client  # noqa: F401

NOW = datetime(2025, 3, 1, 12, 30, 15, tzinfo=UTC)

HEALTH: dict[str, Any] = {
    "pid": 4242,
    "uptime_s": 3600.0,
    "queue_depth": 1,
    "active_requests": 2,
    "loading": None,
    "draining": False,
    "memory": {"used_bytes": 3 * 2**30, "limit_bytes": 12 * 2**30, "evictions": 0},
    "models": [
        {"name": "smollm2-135m-instruct", "kind": "llm", "weight_bytes": 2 * 2**30,
         "prompt_cache_bytes": 2**29, "active_requests": 2, "queued_requests": 1, "tokens_per_s": 41.5},
        {"name": "all-minilm-l6-v2", "kind": "embeddings", "weight_bytes": 90 * 2**20,
         "prompt_cache_bytes": 0, "active_requests": 0, "queued_requests": 0, "tokens_per_s": 0.0},
    ],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(settings: Any, tmp_path: Path) -> None:
    """No worker, no downloader heartbeat, no remote worker: only what a test sets up."""
    settings.MLXM_DATA_DIR = tmp_path
    settings.MLXM_WORKER_SOCKET = str(tmp_path / "nobody-listens.sock")


@pytest.fixture
def worker_up(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The embedded worker answers its health check with HEALTH."""
    health = {**HEALTH, "models": [dict(m) for m in HEALTH["models"]]}

    async def fake() -> dict[str, Any]:
        return {"up": True, **health}

    monkeypatch.setattr(selectors, "_embedded_health", fake)
    return health


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The pages compute "the last hour" and "today" from NOW."""
    monkeypatch.setattr(views, "_now", lambda: NOW)
    return NOW


class Browser:
    """The async stack (as the web server runs the async home views), driven from a sync
    test: the views' database work runs on this thread, so the test's transaction and query
    counting (django_assert_num_queries) see it."""

    def __init__(self, user: Any = None) -> None:
        self.client = AsyncClient()
        if user is not None:
            async_to_sync(self.client.aforce_login)(user)

    def get(self, path: str, *, htmx: bool = False) -> Any:
        headers = {"HX-Request": "true"} if htmx else {}
        return async_to_sync(self.client.get)(path, headers=headers)


@pytest.fixture
def admin_browser(boss: Any) -> Browser:  # noqa: F811
    return Browser(boss)


@pytest.fixture
def member_browser(member: Any) -> Browser:  # noqa: F811
    return Browser(member)


@pytest.fixture
def anonymous_browser(db: None) -> Browser:
    return Browser()
