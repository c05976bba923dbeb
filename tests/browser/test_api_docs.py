"""The management API's docs (/api/docs) in a real browser: Swagger UI renders from our own
static files under the site's Content-Security-Policy, every request the page makes stays on
our origin, and "Try it out" works (the CSRF token comes from the page, not the cookie)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


def test_swagger_ui_renders_from_our_origin_only(gateway: Gateway, open_page: Any) -> None:
    page = open_page()
    log_in(page, gateway.url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)

    response = page.goto(gateway.url + "/api/docs")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in (response.headers.get("content-security-policy") or "")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("MLX Manager API")
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() > 20  # the operations, from /api/openapi.json

    # Try a read: GET /api/keys/ as the logged-in admin.
    op = page.locator(".opblock-get", has=page.locator("[data-path='/api/keys/']")).first
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    op.get_by_role("button", name="Execute").click()
    expect(op.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")

    # The CSRF cookie is not readable by scripts; Swagger UI did not need it.
    assert "csrftoken" not in page.evaluate("document.cookie")
    assert requests and all(
        url.startswith(gateway.url + "/") or url.startswith("data:") for url in requests
    ), [u for u in requests if not u.startswith(gateway.url + "/")]
    assert any(u.endswith("/static/ninja/swagger-ui-bundle.js") for u in requests), requests
    assert not violations, violations


def test_the_v1_reference_renders_from_our_origin_only(gateway: Gateway, open_page: Any) -> None:
    page = open_page()
    log_in(page, gateway.url)
    page.get_by_role("link", name="/v1 reference").click()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.reload()
    expect(page.get_by_role("heading", name="Gateway API reference (/v1)")).to_be_visible()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("MLX Manager gateway")
    chat = page.locator(".opblock-post", has=page.locator("[data-path='/v1/chat/completions']")).first
    expect(chat).to_be_visible()
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    expect(page.locator("nav#site-nav")).to_be_attached()  # inside the app's layout
    shot(page, "v1-reference.png")
    assert requests and all(
        url.startswith(gateway.url + "/") or url.startswith("data:") for url in requests
    ), [u for u in requests if not u.startswith(gateway.url + "/")]
    assert any(u.endswith("/docs/v1/openapi.json") for u in requests), requests
