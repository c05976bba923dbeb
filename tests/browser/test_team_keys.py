"""The team keys page in chromium: an admin sees every user's keys with their usage, filters
by user, edits a member's limits (allowed models ticked from the profiles) and revokes the key;
the member's client feels each change at once.

Saves team-keys.png in docs/screenshots/.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway
from tests.gateway_fixtures import Admin

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

TINY = "tiny-random"
SMOL = "smollm2-135m-instruct"
PASSWORD = "a-long-member-password-42"


def test_team_keys_filter_edit_limits_and_revoke(gateway: Gateway, open_page: Callable[..., Any]) -> None:
    gw = gateway
    admin = Admin(gw)
    kim = "kim-" + uuid.uuid4().hex[:6]
    admin.ok("POST", "/users/", json={"username": kim, "password": PASSWORD, "role": "member"})
    member = Admin(gw, kim, PASSWORD)
    key = member.ok("POST", "/keys/", json={"name": "kim-laptop"})
    admin.ok("POST", "/keys/", json={"name": "admin-ci-" + kim})

    # The member uses the key: the usage shows on the team page.
    client = openai.OpenAI(base_url=gw.v1, api_key=key["key"], max_retries=0, timeout=120)
    client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = admin.ok("GET", "/keys/all", params={"username": kim})
        if rows[0]["tokens_today"] > 0:
            break
        time.sleep(0.3)
    used = rows[0]["tokens_today"]
    assert used > 0

    page = open_page()
    log_in(page, gw.url)
    page.locator("nav").get_by_role("link", name="Team keys", exact=True).click()
    expect(page.get_by_role("heading", name="Team keys")).to_be_visible()
    table = page.locator("#team-keys")
    expect(table.locator("tbody tr", has=page.get_by_text("admin-ci-" + kim, exact=True))).to_have_count(1)

    # Filter by the member: only their key is left.
    page.get_by_label("User").select_option(kim)
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    row = table.locator(f"#key-{key['id']}")
    expect(row).to_contain_text("kim-laptop")
    expect(row.locator(".usage-today")).to_have_text(str(used))
    expect(row.locator(".usage-month")).to_have_text(str(used))
    assert f"user={kim}" in page.url

    # Edit limits: only tiny-random, 5000 tokens a day.
    row.get_by_text("Edit limits").click()
    row.get_by_label(TINY, exact=True).check()
    row.get_by_label("Tokens/day").fill("5000")
    row.get_by_role("button", name="Save limits").click()
    expect(page.locator("#team-keys-panel [role=status]")).to_contain_text(
        f"Saved the limits of kim-laptop ({kim})"
    )
    row = page.locator(f"#key-{key['id']}")
    expect(row.locator(".limits-cell")).to_contain_text(f"models: {TINY}")
    expect(row.locator(".usage-today")).to_contain_text(f"{used} of 5000")
    expect(page.locator("#team-keys tbody tr")).to_have_count(1)  # the filter is kept
    shot(page, "team-keys.png")

    # The member's client sees the change at once.
    assert [m.id for m in client.models.list()] == [TINY]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)

    # Revoke, accepting the confirmation.
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    row.get_by_role("button", name="Revoke").click()
    row = page.locator(f"#key-{key['id']}")
    expect(row.locator(".badge")).to_have_text("revoked")
    assert dialogs and "kim-laptop" in dialogs[0] and kim in dialogs[0]
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
