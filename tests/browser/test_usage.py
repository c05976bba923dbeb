"""The usage page in a real browser: an admin's traffic shows up per key with its chart, a
cloud-equivalent price makes "saved" appear, the CSV export carries the same figures, and a
key budget set on the budgets page warns at 80 % on the usage and keys pages.

Saves usage.png and budgets.png in docs/screenshots/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, manage
from tests.mlxmanager.usage.test_live import env_of

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
TINY = "tiny-random"


def test_usage_page_prices_csv_and_budget_warning(gateway: Gateway, open_page: Callable[..., Any]) -> None:
    from mlxmanager.accounts.services import KEY_PREFIX

    name = f"usage-browser-{time.monotonic_ns()}"
    secret = manage("create_api_key", "--username", "admin", "--name", name, env=env_of(gateway)).strip()
    secret = secret.splitlines()[-1]
    prefix = secret[: len(KEY_PREFIX) + 6]
    c = openai.OpenAI(base_url=gateway.v1, api_key=secret, max_retries=0, timeout=120)
    for _ in range(2):
        c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=8)

    page = open_page()
    log_in(page, gateway.url)
    deadline = time.monotonic() + 15  # the rollup is written as the audit rows are flushed
    while True:
        body = page.request.get(gateway.url + "/api/usage?by=key").json()
        mine = [t for t in body["totals"] if t["group"] == prefix]
        if mine and mine[0]["requests"] == 2:
            break
        assert time.monotonic() < deadline, f"the key's requests never reached the usage rollup: {body}"
        time.sleep(0.3)
    used = mine[0]["total_tokens"]

    page.locator("nav").get_by_role("link", name="Usage", exact=True).click()
    expect(page.get_by_role("heading", name="Usage and spend")).to_be_visible()
    page.get_by_label("By").select_option("key")
    page.get_by_role("button", name="Show").click()
    row = page.locator("#usage-totals-table tbody tr", has=page.get_by_text(prefix, exact=True))
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text("2")
    expect(page.locator("svg[aria-label='Tokens per day'] rect").first).to_be_visible()

    # A cloud-equivalent price for the local profile: "saved" appears.
    page.get_by_role("textbox", name="Backend").fill(f"local:{TINY}")
    page.get_by_label("Input", exact=True).fill("1000")
    page.get_by_label("Output", exact=True).fill("1000")
    page.get_by_role("button", name="Save price").click()
    expect(page.locator("#usage-prices")).to_contain_text(f"Saved the price of local:{TINY}")
    page.reload()
    saved = float(row.locator("td").nth(6).inner_text())
    assert saved > 0
    csv_href = page.get_by_role("link", name="Export CSV").get_attribute("href")
    csv_text = page.request.get(gateway.url + "/usage/" + csv_href.split("/usage/", 1)[1]).text()
    assert f",key,{prefix},2," in csv_text
    shot(page, "usage.png")

    # A budget of the key a bit above what it used: the pages warn (≥ 80 %) but it still works.
    page.goto(gateway.url + "/usage/budgets/")
    page.get_by_label("For").select_option("key")
    page.get_by_label("Username or key prefix").fill(prefix)
    page.get_by_label("Tokens per day").fill(str(int(used / 0.9)))
    page.get_by_role("button", name="Save budget").click()
    expect(page.get_by_role("status").filter(has_text="Budget saved.")).to_be_visible()
    line = page.locator("#budget-lines tbody tr", has=page.get_by_text(prefix))
    expect(line).to_contain_text("≥ 80 %")
    shot(page, "budgets.png")
    for url in ("/usage/", "/keys/"):
        page.goto(gateway.url + url)
        expect(page.locator(".budget-warning").filter(has_text=prefix)).to_contain_text("Budget at")
    assert c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    # Clean up: the price would change other tests' figures.
    page.goto(gateway.url + "/usage/")
    price_row = page.locator("#usage-prices tbody tr", has=page.get_by_text(f"local:{TINY}", exact=True))
    price_row.get_by_role("button", name="Remove").click()
    expect(page.locator("#usage-prices")).to_contain_text(f"Removed the price of local:{TINY}")
