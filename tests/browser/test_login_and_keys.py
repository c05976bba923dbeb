"""A real browser (Debian's chromium through Playwright) against the live gateway.

Log in, see the served models, create an API key, use it, revoke it, log out. Saves the
screenshots in docs/screenshots/.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser.conftest import ADMIN, NEEDS_CHROMIUM, shot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("live"),
    NEEDS_CHROMIUM,
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


@pytest.fixture
def page(open_page):  # type: ignore[no-untyped-def]
    return open_page(allowed=(400,))  # the one 400 is expected: the blank key name below


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

    # The right one logs in and lands on the home page (with the served models).
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Served models")).to_be_visible()
    expect(page).to_have_url(gateway.url + "/")
    expect(page.locator(".who")).to_contain_text("admin")

    served = page.locator("table.served")  # the home page's other tables may name them too
    smol = served.locator("tr", has=page.get_by_text("smollm2-135m-instruct", exact=True))
    expect(smol.locator(".badge")).to_have_text("default")
    tiny = served.locator("tr", has=page.get_by_text("tiny-random", exact=True))
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
