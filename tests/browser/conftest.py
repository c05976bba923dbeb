"""Shared pieces of the browser tests: Debian's chromium through Playwright, a page that
fails the test on any script error, console error or HTTP error, and screenshots."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found: install it with `make browser` (apt-get install chromium)"
)


ADMIN = ("admin", "correct-horse-battery")


def log_in(page: Any, url: str, username: str = ADMIN[0], password: str = ADMIN[1]) -> None:
    from playwright.sync_api import expect

    page.goto(url + "/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Served models")).to_be_visible()
    expect(page.locator(".who")).to_contain_text(username)


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[..., Any]]:
    """Open a fresh browser context (its own cookies) and page; `allowed` lists HTTP statuses
    the test provokes on purpose. After the test, no page may have had an unexpected error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(allowed: tuple[int, ...] = (), height: int = 800, timeout_ms: int = 15_000) -> Any:
        context = chromium.new_context(viewport={"width": 1280, "height": height})
        context.set_default_timeout(timeout_ms)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def on_console(msg: Any) -> None:
            if msg.type == "error" and not any(f"status of {s}" in msg.text for s in allowed):
                errors.append(msg.text)

        page.on("console", on_console)
        page.on(
            "response",
            lambda r: (
                errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.status not in allowed else None
            ),
        )
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"errors in the page: {errors}"
