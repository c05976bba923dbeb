"""A real browser (Debian's chromium through Playwright) against the live gateway.

Log in, see the served models, create an API key, use it, revoke it, log out. Saves the
screenshots in docs/screenshots/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("live"),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium not found: install it with `make browser` (apt-get install chromium)",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = ("admin", "correct-horse-battery")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(msg) -> None:  # type: ignore[no-untyped-def]
        # The one 400 is expected: the blank key name below.
        if msg.type == "error" and "status of 400" not in msg.text:
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status > 400 else None)
    try:
        yield page
        assert not errors, f"errors in the page: {errors}"
    finally:
        context.close()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def models_status(gateway, key: str) -> int:  # type: ignore[no-untyped-def]
    return httpx.get(
        gateway.v1 + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).status_code


def test_login_models_and_api_keys(gateway, page) -> None:  # type: ignore[no-untyped-def]
    # Anonymous visitors are sent to the login page.
    page.goto(gateway.url + "/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    # The stylesheet and htmx load (no unstyled page in production mode).
    assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).display") == "flex"
    assert page.evaluate("typeof window.htmx") == "object"
    shot(page, "login.png")

    # A wrong password shows the error and keeps us on the login page.
    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    expect(page).to_have_url(re.compile(r"/login/"))

    # The right one logs in and lands on the models page.
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Served models")).to_be_visible()
    expect(page).to_have_url(gateway.url + "/")
    expect(page.locator(".who")).to_contain_text("admin")

    smol = page.locator("tr", has=page.get_by_text("smollm2-135m-instruct", exact=True))
    expect(smol.locator(".badge")).to_have_text("default")
    tiny = page.locator("tr", has=page.get_by_text("tiny-random", exact=True))
    expect(tiny.locator(".badge")).to_have_text("test model")
    expect(page.get_by_text(gateway.v1, exact=True)).to_be_visible()
    shot(page, "models.png")

    # API keys: create one; the secret is shown once.
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()

    # A blank name (spaces pass the `required` check) shows the server's message in place.
    page.get_by_label("Name").fill("   ")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#keys-panel [role=alert]")).to_have_text("a key needs a name")

    page.get_by_label("Name").fill("browser")
    page.get_by_role("button", name="Create key").click()
    new_key = page.locator("#new-key")
    expect(new_key).to_be_visible()
    secret = new_key.inner_text().strip()
    assert secret.startswith("mlxm-")
    row = page.locator("#keys-panel tbody tr", has=page.get_by_text("browser", exact=True))
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("active")
    assert page.url == gateway.url + "/keys/"  # swapped in by htmx, no full page load
    shot(page, "keys.png")

    # The key works against the OpenAI-compatible API.
    assert models_status(gateway, secret) == 200

    # Revoke it in the UI, accepting the confirmation dialog.
    dialogs: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".badge")).to_have_text("revoked")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    assert dialogs and "browser" in dialogs[0]
    expect(page.locator("#new-key")).to_have_count(0)  # never shown again

    assert models_status(gateway, secret) == 401

    # Reloading never shows the secret again.
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()

    # Log out: back to the login page, and the pages need a login again.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(gateway.url + "/keys/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/keys/$"))
