"""A real browser on the Settings page (a change takes effect in the running web processes
and worker, no restart; a bad value is refused with the form kept) and on the Connect page
(the server's address, a new key filled into copy-ready setup that works)."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
APP = "https://app.example.com"


def preflight(gateway) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.options(
        gateway.v1 + "/chat/completions",
        headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )


def test_settings_change_takes_effect_without_a_restart(gateway, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page(allowed=(400,))  # the refused value below
    log_in(page, gateway.url)
    assert "access-control-allow-origin" not in preflight(gateway).headers
    page.get_by_role("link", name="Settings", exact=True).click()
    expect(page.get_by_role("heading", name="Settings", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="single sign-on settings")).to_have_attribute(
        "href", "/settings/sso/"
    )
    try:
        # A bad value: nothing is saved, the message names the setting, what was typed stays.
        page.get_by_label("CORS origins for /v1").fill(APP)
        page.get_by_label("Queue length per model").fill("-3")
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("alert")).to_contain_text("Queue length per model: must be between 0 and")
        expect(page.get_by_label("CORS origins for /v1")).to_have_value(APP)
        assert "access-control-allow-origin" not in preflight(gateway).headers

        page.get_by_label("Queue length per model").fill("50")
        page.get_by_role("button", name="Save settings").click()
        result = page.locator("#settings-result")
        expect(result).to_contain_text("CORS origins for /v1: applied live (web")
        expect(result).to_contain_text("Queue length per model: applied live (sent to the worker)")
        expect(result).to_contain_text("the worker applied: queue: at most 50 waiting per model")
        expect(page.locator("#setting-max_queue .source")).to_have_text("database")
        shot(page, "settings.png")
        # The web process answers the browser origin now, with no restart.
        assert preflight(gateway).headers["access-control-allow-origin"] == APP
    finally:
        page.goto(gateway.url + "/settings/")
        page.get_by_label("CORS origins for /v1").fill("")
        page.get_by_label("Queue length per model").fill("")
        page.get_by_role("button", name="Save settings").click()
        expect(page.locator("#settings-result")).to_contain_text("Saved.")
    assert "access-control-allow-origin" not in preflight(gateway).headers
    page.goto(gateway.url + "/audit/actions/")
    expect(page.locator("table.changes").get_by_text("Settings changed").first).to_be_visible()


def test_connect_page_gives_working_setup(gateway, open_page) -> None:  # type: ignore[no-untyped-def]
    page = open_page()
    log_in(page, gateway.url)
    page.get_by_role("link", name="Connect", exact=True).click()
    expect(page.get_by_role("heading", name="Connect your tools")).to_be_visible()
    expect(page.locator("#base-url")).to_have_text(gateway.url)
    page.get_by_label("New key named").fill("claude-code-laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    claude_code = page.locator("#snippet-claude-code")
    expect(claude_code).to_contain_text(f"ANTHROPIC_BASE_URL={gateway.url}")
    expect(claude_code).to_contain_text(f"ANTHROPIC_AUTH_TOKEN={secret}")
    expect(page.locator("#snippet-curl")).to_contain_text(f"{gateway.url}/v1/chat/completions")
    for editor in (
        "Continue (VS Code, JetBrains)",
        "Cursor",
        "Zed",
        "OpenAI SDK (Python)",
        "Anthropic SDK (Python)",
    ):
        expect(page.get_by_role("heading", name=editor)).to_be_visible()
    page.locator("#connect-curl button.copy").click()
    expect(page.locator("#connect-curl button.copy")).to_have_text(re.compile("Copied|Select and copy"))
    shot(page, "connect.png")

    # The key picker: the new key is listed by its prefix and chosen.
    page.goto(gateway.url + "/connect/")
    picker = page.locator("#key-select")
    expect(picker.locator("option", has_text="claude-code-laptop")).to_have_count(1)
    chosen = picker.locator("option", has_text="claude-code-laptop").get_attribute("value")
    picker.select_option(chosen)
    expect(page).to_have_url(re.compile(rf"/connect/\?key={chosen}$"))
    expect(page.locator("#snippet-openai-python")).to_contain_text("(your key claude-code-laptop)")

    # What the page handed out works with the real SDK.
    client = openai.OpenAI(base_url=gateway.v1, api_key=secret, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data]
