"""Live-gateway fixtures for the team-gateway tests: a fake upstream, a gateway whose
environment suits it (fast retries, a small circuit breaker, a quick audit flush), and an
admin session on its management API. Import the fixtures into a test module to use them."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.inference.fakes import FakeUpstream

ADMIN_PASSWORD = "correct-horse-battery"
GATEWAY_ENV = {
    "MLXM_AUDIT_FLUSH_INTERVAL": "0.1",
    "MLXM_UPSTREAM_BACKOFF": "0.01",
    "MLXM_UPSTREAM_RETRIES": "1",
    "MLXM_BREAKER_FAILURES": "4",
    "MLXM_BREAKER_COOLDOWN": "1.5",
    "MLXM_UPSTREAM_TIMEOUT": "20",
}
_seq = itertools.count(1)


def uid(prefix: str = "m") -> str:
    return f"{prefix}-{next(_seq)}-{uuid.uuid4().hex[:6]}"


class Admin:
    """A logged-in admin browser session (cookie + CSRF) on the live server."""

    def __init__(self, gw: Gateway, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, timeout=30)
        self.http.get("/login/")
        token = self.http.cookies["csrftoken"]
        r = self.http.post(
            "/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        assert r.status_code == 302, r.text[:500]
        self.csrf = self.http.cookies["csrftoken"]

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-CSRFToken": self.csrf, **kw.pop("headers", {})}
        return self.http.request(method, "/api" + path, headers=headers, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.api(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def credential(
        self, fake: FakeUpstream, provider: str, *, name: str | None = None, key: str | None = None
    ) -> dict[str, Any]:
        base = fake.openai_base if provider.startswith("openai") else fake.url
        body = {"name": name or uid("cred"), "provider": provider, "base_url": base,
                "secret": fake.key if key is None else key}  # fmt: skip
        return self.ok("POST", "/credentials/", json=body)  # type: ignore[no-any-return]

    def rule(self, pattern: str, *targets: dict[str, str], match_type: str = "exact",
             timeout_s: float | None = None, name: str | None = None) -> dict[str, Any]:  # fmt: skip
        body = {"name": name or uid("rule"), "match_type": match_type, "pattern": pattern,
                "targets": list(targets), "timeout_s": timeout_s}  # fmt: skip
        return self.ok("POST", "/rules/", json=body)  # type: ignore[no-any-return]

    def requests(self, **params: Any) -> list[dict[str, Any]]:
        return self.ok("GET", "/audit/requests", params=params)["items"]  # type: ignore[no-any-return]

    def wait_rows(
        self, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 10, **params: Any
    ) -> list[dict[str, Any]]:
        """Audit rows are flushed in the background: poll until `predicate(rows)` holds."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.requests(**params)
            if predicate(rows):
                return rows
            time.sleep(0.1)
        raise AssertionError(f"audit rows never matched: {rows[:5]}")


def start_routed_gateway(
    data_dir: Path, demo_models: dict[str, Path], env: dict[str, str] | None = None
) -> Gateway:
    overrides = {**GATEWAY_ENV, **(env or {})}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        return start_gateway(data_dir, demo_models)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def routed_gateway(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                   fake_upstream: FakeUpstream) -> Iterator[Gateway]:  # fmt: skip
    gw = start_routed_gateway(tmp_path_factory.mktemp("routed"), demo_models)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def admin(routed_gateway: Gateway) -> Admin:
    return Admin(routed_gateway)
