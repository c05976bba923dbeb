"""Discover never hangs, and a model goes from disk to a profile, in a real browser (Debian's
chromium through Playwright) against `manage.py serve` whose hub is the fake hub of the
downloads tests: an unreachable hub is one message with what to check and a Retry; typing
sends one search per query (counted at the fake hub); a model opens by its repo id with no
search; Local models updates live and "Create profile" opens the form prefilled from the
model's config."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in
from tests.browser.test_discover_and_download import MODEL, Server, hub, server  # noqa: F401
from tests.mlxmanager.downloads.conftest import QWEN
from tests.mlxmanager.downloads.fakehub import FakeHub

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect


def searches(fake: FakeHub) -> int:
    return len(fake.gets("/api/models"))


def settle(fake: FakeHub, quiet_s: float = 1.5) -> int:
    """The hub's search count once no search has arrived for `quiet_s` (longer than the pause
    the page waits before it searches)."""
    count, since = searches(fake), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        if searches(fake) != count:
            count, since = searches(fake), time.monotonic()
    return count


@pytest.fixture
def page(open_page: Any, server: Server) -> Any:  # noqa: F811
    page = open_page(allowed=(400,), timeout_ms=20_000)  # one 400: deleting a model a profile uses
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.accept()))
    log_in(page, server.url)
    return page


def test_an_unreachable_hub_shows_one_message_fast_and_retry_recovers(
    server: Server,  # noqa: F811
    hub: FakeHub,  # noqa: F811
    page: Any,
) -> None:
    hub.stop()
    # A query no other test asks: the server keeps hub answers for a while (and rightly shows a
    # cached answer while the hub is away), and the tests run in any order.
    unreachable = server.url + "/models/discover/?q=Instruct-2507"
    try:
        page.goto(unreachable)
        expect(page.get_by_role("heading", name="Discover models")).to_be_visible()
        alert = page.locator("#results [role=alert]")
        # Far sooner than huggingface_hub's retries (~25 s) or the page deadline (15 s).
        expect(alert).to_contain_text("Cannot reach the hub", timeout=5_000)
        expect(alert).to_contain_text("MLXM_HF_ENDPOINT")
        expect(alert).to_contain_text("HTTPS_PROXY")
        expect(page.locator("[role=alert]")).to_have_count(1)
        expect(page.locator("#search-state")).to_have_text("")  # no "Searching…" beside it
        assert "Errno" not in alert.inner_text()

        # The model page: the same message with a retry, not an error page. A repo no other test
        # opens, for the same reason as the query above (a cached model page is rightly shown).
        page.goto(f"{server.url}/models/discover/mlx-community/Never-Opened-4bit/")
        expect(page.locator("[role=alert]")).to_contain_text("MLXM_HF_ENDPOINT", timeout=5_000)
        expect(page.get_by_role("link", name="Retry")).to_be_visible()
        page.goto(unreachable)
        expect(page.locator("#results [role=alert]")).to_be_visible(timeout=5_000)
    finally:
        hub.start()  # same port
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#results tbody tr").first).to_contain_text(MODEL)
    expect(page.locator("[role=alert]")).to_have_count(0)


def test_typing_sends_one_search_per_query(server: Server, hub: FakeHub, page: Any) -> None:  # noqa: F811
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/models/discover/?" in r.url else None)
    page.goto(server.url + "/models/discover/")
    expect(page.locator("#results tbody tr").first).to_be_visible()
    before = settle(hub)
    box = page.get_by_label("Search", exact=True)
    box.click()
    box.press_sequentially("qwen", delay=60)  # keystrokes well inside the 600 ms pause
    expect(page.locator("#results tbody tr")).to_have_count(3)
    assert settle(hub) == before + 1, [(r.method, r.path) for r in hub.requests]
    box.press("Enter")  # the query already shown: not asked again
    assert settle(hub) == before + 1
    typed = [u for u in asked if re.search(r"[?&]q=q", u)]
    assert len(typed) == 1 and "q=qwen" in typed[0], asked
    expect(page).to_have_url(re.compile(r"q=qwen"))
    page.get_by_label("Type").select_option("text")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    assert settle(hub) == before + 2


def test_add_a_model_by_repo_id_without_searching(server: Server, hub: FakeHub, page: Any) -> None:  # noqa: F811
    page.goto(server.url + "/models/discover/")
    page.get_by_label("Add by repo id").fill(QWEN)
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("heading", name=QWEN)).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("40960 tokens")
    expect(page.get_by_role("button", name="Download")).to_be_enabled()


def test_create_a_profile_from_a_local_model(server: Server, page: Any) -> None:  # noqa: F811
    page.goto(server.url + "/models/local/")
    expect(page.get_by_role("heading", name="Local models")).to_be_visible()
    folder = Path(server.env["MLXM_DATA_DIR"]) / "models" / "acme--Tiny-Chat-1B"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192}
        )
    )
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    row = page.locator("#local-list tr", has_text="acme--Tiny-Chat-1B")
    expect(row).to_be_visible(timeout=10_000)  # live: no reload
    row.get_by_role("link", name="Create profile").click()
    expect(page.get_by_label("Name")).to_have_value("tiny-chat-1b")
    expect(page.get_by_label("Type")).to_have_value("llm")
    expect(page.get_by_label("Context length")).to_have_value("8192")
    page.get_by_role("button", name="Create profile").click()
    expect(page.locator("body")).to_contain_text("Created profile tiny-chat-1b.")

    page.goto(server.url + "/models/local/")
    row = page.locator("#local-list tr", has_text="acme--Tiny-Chat-1B")
    expect(row.locator(".badge")).to_have_text("tiny-chat-1b")
    expect(row.get_by_role("button", name="Load tiny-chat-1b")).to_be_visible()

    # Delete asks first, naming the profile; the server refuses while the profile uses it.
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#local-panel [role=alert]")).to_contain_text("the profile tiny-chat-1b uses it")
    assert page.dialogs and "The profile tiny-chat-1b uses it" in page.dialogs[-1], page.dialogs
    assert folder.is_dir()
