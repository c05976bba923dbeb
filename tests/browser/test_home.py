"""A fresh install in a real browser (Debian's chromium through Playwright), live gateway:

`serve` prints the one-time setup link → the form creates the admin and lands on the home
page's checklist → an API key from the checklist's link → the snippet's request (here httpx)
→ back home, the checklist and the dashboard update by themselves (no reload) without taking
the keyboard focus → the home page at 1400 and 390 px wide, with no horizontal overflow.
Saves setup.png, home-wide.png, home-phone.png and home-member-phone.png in docs/screenshots/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, shot
from tests.conftest import Gateway, start_gateway, stop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

ADMIN = ("ops", "a-long-setup-password-42")


@pytest.fixture
def fresh_gateway(demo_models: dict[str, Path], tmp_path: Path) -> Iterator[Gateway]:
    """A live server with no user yet (its own data dir): `serve` prints the setup link."""
    gw = start_gateway(tmp_path / "gw", demo_models, admin=False)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def setup_link(gw: Gateway, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"(http://\S+/setup/[A-Za-z0-9_-]{43})\s", gw.log_path.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no setup link in serve's output:\n{gw.log_path.read_text()[-2000:]}")


def no_horizontal_overflow(page: Any) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"


def live_updates(page: Any) -> int:
    return int(page.locator("#home-poll").get_attribute("data-updates") or 0)


def test_setup_link_checklist_and_live_dashboard(fresh_gateway: Gateway, open_page: Any) -> None:
    gw = fresh_gateway
    link = setup_link(gw)
    assert link.startswith(gw.url + "/setup/")
    assert (gw.data_dir / "setup_token").exists()
    page = open_page(allowed=(400, 404), height=900, timeout_ms=25_000)

    # --- A wrong token is a 404; the right one opens the form ----------------------------
    assert page.goto(gw.url + "/setup/" + "x" * 43).status == 404
    page.goto(link)
    expect(page).to_have_url(gw.url + "/setup/")  # the token left the address bar
    expect(page.get_by_role("heading", name="Create the admin")).to_be_visible()

    # Mismatched passwords: the error, the username kept.
    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password", exact=True).fill(ADMIN[1])
    page.get_by_label("Password again").fill(ADMIN[1])
    page.get_by_label("Password again").blur()
    shot(page, "setup.png")
    page.get_by_label("Password again").fill(ADMIN[1] + "!")
    page.get_by_role("button", name="Create admin and log in").click()
    expect(page.locator("#password2-error")).to_have_text("The two passwords differ.")
    expect(page.get_by_label("Username")).to_have_value(ADMIN[0])
    page.get_by_label("Password", exact=True).fill(ADMIN[1])
    page.get_by_label("Password again").fill(ADMIN[1])
    page.get_by_role("button", name="Create admin and log in").click()

    # --- Logged in, on the home page's checklist -----------------------------------------
    expect(page).to_have_url(gw.url + "/")
    expect(page.locator(".who")).to_contain_text(ADMIN[0])
    checklist = page.locator(".checklist")
    expect(checklist.get_by_role("heading", name="Get started")).to_be_visible()
    expect(page.locator("#checklist-count")).to_have_text("0")
    expect(checklist.locator("pre#snippet-curl")).to_contain_text(f"curl {gw.v1}/chat/completions")
    expect(checklist.locator("pre#snippet-python")).to_contain_text(f'base_url="{gw.v1}"')
    assert not (gw.data_dir / "setup_token").exists()
    assert page.goto(link).status == 404  # the link worked once
    page.goto(gw.url + "/")

    # --- Step 1 through the checklist's link: a key ---------------------------------------
    checklist.get_by_role("link", name="Create an API key").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text().strip()
    page.get_by_role("link", name="Home").click()
    expect(page.locator("#tick-key")).to_have_class(re.compile(r"\bdone\b"))
    expect(page.locator("#tick-snippet")).not_to_have_class(re.compile(r"\bdone\b"))

    # --- Keyboard focus on the page, then traffic from elsewhere -------------------------
    copy = page.locator('button[data-copy="snippet-curl"]')
    copy.focus()
    before = live_updates(page)
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(3):
        r = httpx.post(gw.v1 + "/chat/completions", headers=headers, timeout=60, json={
            "model": "tiny-random", "max_tokens": 8, "messages": [{"role": "user", "content": f"hi {i}"}]})  # fmt: skip
        assert r.status_code == 200, r.text
    r = httpx.post(gw.v1 + "/chat/completions", headers=headers, timeout=60,
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 404

    # The poll brings the tick, the numbers and the loaded model, with no reload...
    expect(page.locator("#tick-snippet")).to_have_class(re.compile(r"\bdone\b"))
    expect(page.locator("#checklist-count")).to_have_text("2")
    expect(page.locator('[data-stat="rpm"]')).not_to_have_text("0")
    expect(page.locator('[data-stat="errors"]')).to_have_text("25.0%")
    expect(page.locator('#live-models tr[data-model="tiny-random"]')).to_be_visible()
    expect(page.locator("#live-users")).to_contain_text(ADMIN[0])
    assert live_updates(page) > before
    # ...and the focus stays where it was (a swap never replaces a focusable element).
    assert page.evaluate("document.activeElement && document.activeElement.dataset.copy") == "snippet-curl"
    assert page.evaluate("window.scrollY") == 0

    # --- Wide and narrow: everything fits -------------------------------------------------
    expect(page.locator('[data-process="Inference worker"] .badge')).to_have_text("up")
    expect(page.locator('[data-process="Downloader"] .badge')).to_have_text("up")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.evaluate("document.activeElement.blur()")
    no_horizontal_overflow(page)
    shot(page, "home-wide.png")
    page.set_viewport_size({"width": 390, "height": 844})
    no_horizontal_overflow(page)
    expect(page.locator('[data-stat="ttft"]')).to_be_visible()
    shot(page, "home-phone.png")
    # A live update at this width still fits.
    seen = live_updates(page)
    expect(page.locator("#home-poll")).not_to_have_attribute("data-updates", str(seen))
    no_horizontal_overflow(page)


def test_member_home_fits_a_phone(gateway: Gateway, open_page: Any) -> None:
    """A member's simpler home: their usage, keys and the playground, at 390 px."""
    from tests.browser.conftest import log_in
    from tests.gateway_fixtures import Admin, uid

    name = uid("member")
    Admin(gateway).ok(
        "POST", "/users/", json={"username": name, "password": "quartz-lamp-93-river", "role": "member"}
    )
    page = open_page(height=844)
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, gateway.url, name, "quartz-lamp-93-river")
    expect(page.get_by_role("heading", name="Your usage")).to_be_visible()
    expect(page.get_by_role("link", name="Start a chat")).to_have_attribute("href", "/playground/")
    expect(page.locator(".checklist")).to_have_count(0)
    expect(page.locator("#home-poll")).to_have_count(0)
    no_horizontal_overflow(page)
    shot(page, "home-member-phone.png")
