"""The API reference pages (mlxmanager/apidocs.py): /api/docs and the /v1 reference, inside
the app's layout, from our own static files, for every logged-in user."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from mlxmanager.security import POLICY

pytestmark = pytest.mark.django_db


@pytest.fixture
def member_client(settings) -> Client:  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = Client()
    client.force_login(get_user_model().objects.create_user(username="reader", password="pw-reader-123456"))
    return client


def _assets(html: str) -> list[str]:
    found = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']([^\"']+)", html)
    return [a for a in found if not a.startswith("data:")]  # the favicon: no request


@pytest.mark.parametrize("path", ["/api/docs", "/docs/v1/"])
def test_docs_pages_are_in_the_layout_and_load_only_our_assets(member_client: Client, path: str) -> None:
    resp = member_client.get(path)
    assert resp.status_code == 200 and resp["Content-Security-Policy"] == POLICY
    html = resp.content.decode()
    assert '<header class="topbar">' in html and "<h1>" in html  # the app's layout
    assert 'href="/docs/v1/"' in html  # the navigation links the /v1 reference
    for asset in _assets(html):
        assert asset.startswith("/static/"), asset
        assert member_client.get(asset).status_code == 200, asset
    assert "/static/ninja/swagger-ui-bundle.js" in html and "/static/js/api-docs.js" in html
    assert not re.search(r"https?://|//cdn", re.sub(r'"data:[^"]*"', '""', html))
    settings = json.loads(re.search(r'id="swagger-settings">(.*?)</script>', html, re.S).group(1))
    assert settings["validatorUrl"] is None


def test_api_docs_send_the_csrf_token_and_the_v1_reference_does_not(member_client: Client) -> None:
    api = member_client.get("/api/docs").content.decode()
    assert re.search(r'data-csrf-token="\w{20,}"', api)
    assert '"url": "/api/openapi.json"' in api
    v1 = member_client.get("/docs/v1/").content.decode()
    assert 'data-csrf-token=""' in v1 and '"url": "/docs/v1/openapi.json"' in v1
    assert 'aria-current="page">/v1 reference' in v1


def test_the_v1_schema_lists_the_gateway_with_its_api_key_schemes(member_client: Client) -> None:
    resp = member_client.get("/docs/v1/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models", "/v1/audio/speech"):
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An MLX Manager API key.",
    }
    assert {"bearer": []} in schema["security"] and "API keys page" in schema["info"]["description"]


@pytest.mark.parametrize("path", ["/docs/v1/", "/docs/v1/openapi.json"])
def test_the_v1_reference_needs_a_login(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")
