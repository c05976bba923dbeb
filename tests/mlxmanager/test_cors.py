"""CORS on /v1 for browser-based clients: off by default, on with MLXM_CORS_ORIGINS, never on
pages or /api."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db
ORIGIN = "https://app.example.com"
PREFLIGHT = {"HTTP_ORIGIN": ORIGIN, "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
             "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization, content-type"}  # fmt: skip


def test_off_by_default(client: Client, settings: Any) -> None:
    settings.MLXM_CORS_ORIGINS = ()
    r = client.options("/v1/chat/completions", **PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.get("/v1/models", HTTP_ORIGIN=ORIGIN)
    assert "Access-Control-Allow-Origin" not in r.headers


def test_preflight_and_answers_on_v1_when_enabled(client: Client, settings: Any) -> None:
    settings.MLXM_CORS_ORIGINS = (ORIGIN,)
    r = client.options("/v1/chat/completions", **PREFLIGHT)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"]
    # An answer (here a 401: no key) carries the headers, so the browser can read the error.
    r = client.get("/v1/models", HTTP_ORIGIN=ORIGIN)
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in r.headers["Access-Control-Expose-Headers"]
    # Another origin gets nothing.
    r = client.options("/v1/chat/completions", **{**PREFLIGHT, "HTTP_ORIGIN": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_never_on_pages_or_api(client: Client, settings: Any) -> None:
    settings.MLXM_CORS_ORIGINS = ("*",)
    for path in ("/api/profiles/", "/login/", "/healthz"):
        r = client.options(path, **PREFLIGHT)
        assert "Access-Control-Allow-Origin" not in r.headers, path
        r = client.get(path, HTTP_ORIGIN=ORIGIN)
        assert "Access-Control-Allow-Origin" not in r.headers, path
    assert client.get("/v1/models", HTTP_ORIGIN=ORIGIN).headers["Access-Control-Allow-Origin"] == "*"
