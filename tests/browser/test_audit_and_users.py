"""Issue 18 items 8 and 9 in a real browser (chromium) against a live server:

- the audit page's filters reach the table, the totals, the chart and the export links (an
  export of "admin, errors only" is those rows only); a "to" before "from" is refused with a
  clear message and the form keeps what was typed; the admin-changes page filters by actor,
  object and action and shows readable diffs; both pages fit an 800 px window;
- users: a failed create keeps its values; deactivate and role changes ask first (Cancel
  changes nothing); an admin resets a password with a temporary password (changed at the next
  sign-in) and with a one-time link; a member changes their own password.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.browser.conftest import ADMIN, NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, manage, start_gateway, stop_gateway

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

ZOE = ("zoe", "harbor-violet-58-compass")
NEW = "granite-orbit-71-lantern"


@pytest.fixture(scope="module")
def server(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("audit-users"), demo_models)
    yield gw
    stop_gateway(gw)


def _env(gw: Gateway) -> dict[str, str]:
    env = {**os.environ, "MLXM_DATA_DIR": str(gw.data_dir), "DJANGO_SETTINGS_MODULE": "mlxmanager.settings"}
    env.pop("DATABASE_URL", None)
    return env


def _fits(page: Any, width: int = 800) -> None:
    """No horizontal page scroll: wide tables scroll in their own box."""
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page is {scroll} px wide in a {width} px window"


def _traffic(gw: Gateway) -> None:
    """Real requests through /v1: admin 2 ok + 1 error, zoe 1 ok + 2 errors."""
    admin = gw.openai()
    zoe_key = (
        manage("create_api_key", "--username", ZOE[0], "--name", "zoe", env=_env(gw)).strip().splitlines()[-1]
    )
    zoe = openai.OpenAI(base_url=gw.v1, api_key=zoe_key, max_retries=0, timeout=120)
    for client, ok, bad in ((admin, 2, 1), (zoe, 1, 2)):
        for _ in range(ok):
            client.chat.completions.create(
                model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        for _ in range(bad):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=2
                )


def test_audit_filters_reach_totals_chart_and_export(server: Gateway, open_page: Callable[..., Any]) -> None:
    gw = server
    page = open_page(allowed=(400,), timeout_ms=60_000)
    log_in(page, gw.url)
    # zoe, a member, made by the admin through /api (the page's session).
    made = page.request.post(gw.url + "/api/users/", data={"username": ZOE[0], "password": ZOE[1], "role": "member"},
                             headers={"X-CSRFToken": _csrf(page)})  # fmt: skip
    assert made.status == 201, made.text()
    _traffic(gw)
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto(gw.url + "/audit/")
    rows = page.locator("#audit-rows tr")
    form = page.locator("form.filters")
    form.locator("[name=user]").fill(ADMIN[0])
    form.locator("[name=status]").select_option("error")
    for _ in range(60):  # rows are flushed in the background
        form.get_by_role("button", name="Filter").click()
        expect(page.locator("#audit-results")).to_be_visible()
        if rows.count() == 1 and "no-such-model" in rows.first.inner_text():
            break
        page.wait_for_timeout(250)
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"/audit/\?.*user=admin.*status=error"))
    # The totals: only admin's errors.
    totals = page.locator("#audit-summary .totals")
    expect(totals).to_contain_text("no-such-model")
    expect(totals.get_by_role("cell", name=ZOE[0], exact=True)).to_have_count(0)
    expect(totals.get_by_role("cell", name="tiny-random", exact=True)).to_have_count(0)
    # The chart: the bars add up to that one request.
    expect(page.locator("#audit-summary svg")).to_be_visible()
    titles = page.locator("#audit-summary svg title").all_text_contents()
    assert sum(int(re.search(r": (\d+) requests", t).group(1)) for t in titles) == 1  # type: ignore[union-attr]
    # The export links: that one row.
    href = page.get_by_role("link", name="Export CSV").get_attribute("href")
    assert href and "user=admin" in href and "status=error" in href
    exported = list(csv.DictReader(io.StringIO(page.request.get(gw.url + href).text())))
    assert [(r["username"], r["requested_model"], r["status"]) for r in exported] == [
        ("admin", "no-such-model", "404")
    ]
    jsonl = page.get_by_role("link", name="Export JSONL").get_attribute("href")
    assert len(page.request.get(gw.url + (jsonl or "")).text().splitlines()) == 1
    _fits(page)
    shot(page, "audit-filtered.png")

    # The same for zoe, all statuses: her three requests everywhere.
    form.locator("[name=user]").fill(ZOE[0])
    form.locator("[name=status]").select_option("")
    form.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(3)
    expect(totals.get_by_role("cell", name=ZOE[0], exact=True)).to_have_count(1)  # the totals reloaded
    expect(totals.get_by_role("cell", name=ADMIN[0], exact=True)).to_have_count(0)
    titles = page.locator("#audit-summary svg title").all_text_contents()
    assert sum(int(re.search(r": (\d+) requests", t).group(1)) for t in titles) == 3  # type: ignore[union-attr]
    href = page.get_by_role("link", name="Export CSV").get_attribute("href")
    assert len(list(csv.DictReader(io.StringIO(page.request.get(gw.url + (href or "")).text())))) == 3

    # "To" before "From": a clear message, nothing shown, and the form keeps what was typed.
    form.locator("[name=since]").fill("2025-03-02T10:00")
    form.locator("[name=until]").fill("2025-03-01T10:00")
    form.get_by_role("button", name="Filter").click()
    expect(page.locator("#filter-error")).to_contain_text("must be later than")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_text("No requests match.")
    expect(page.get_by_role("link", name="Export CSV")).to_have_count(0)
    expect(form.locator("[name=since]")).to_have_value("2025-03-02T10:00")
    expect(form.locator("[name=user]")).to_have_value(ZOE[0])
    _fits(page)


def _csrf(page: Any) -> str:
    return str(page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']"))


def test_admin_changes_filters_and_diffs_in_800_px(server: Gateway, open_page: Callable[..., Any]) -> None:
    gw = server
    page = open_page(timeout_ms=60_000)
    log_in(page, gw.url)
    page.set_viewport_size({"width": 800, "height": 900})
    # A change with a diff: a profile's description and context length, through /api.
    changed = page.request.patch(
        gw.url + "/api/profiles/tiny-random",
        data={"description": "A tiny random model for the tests, described at length so the cell wraps"},
        headers={"X-CSRFToken": _csrf(page)},
    )
    assert changed.status == 200, changed.text()
    page.goto(gw.url + "/audit/actions/")
    form = page.locator("#action-filters")
    form.get_by_label("Who").fill(ADMIN[0])
    form.get_by_label("Object").fill("profile")
    form.get_by_label("Action").select_option(label="Profile changed")
    form.get_by_role("button", name="Filter").click()
    rows = page.locator("table.changes tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Profile changed")
    diff = rows.first.locator("dl.diff")
    expect(diff.locator("dt")).to_have_text(["description"])
    expect(diff.locator("ins")).to_contain_text("described at length")
    assert "[" not in rows.first.inner_text() and "None" not in rows.first.inner_text()
    expect(form.get_by_label("Who")).to_have_value(ADMIN[0])
    _fits(page)
    shot(page, "admin-changes.png")


def test_user_lifecycle(server: Gateway, open_page: Callable[..., Any]) -> None:
    gw = server
    admin = open_page(allowed=(400,), timeout_ms=60_000)
    log_in(admin, gw.url)
    admin.goto(gw.url + "/users/")
    create = admin.locator("form", has=admin.get_by_role("button", name="Create user"))
    # A refused create keeps what was typed (not the password).
    create.get_by_label("Username").fill("lena")
    create.get_by_label("Password").fill("lena1234")
    create.get_by_label("Role").select_option("admin")
    create.get_by_role("button", name="Create user").click()
    expect(admin.locator("#users-panel .error")).to_contain_text("username")
    expect(create.get_by_label("Username")).to_have_value("lena")
    expect(create.get_by_label("Role")).to_have_value("admin")
    create.get_by_label("Password").fill("lantern-quiet-84-meadow")
    create.get_by_label("Role").select_option("member")
    create.get_by_role("button", name="Create user").click()
    lena = admin.locator("#users-panel tbody tr", has=admin.get_by_text("lena", exact=True))
    expect(lena).to_have_count(1)

    # Deactivate asks first; Cancel changes nothing; confirming does it.
    lena.get_by_role("button", name="Deactivate").click()
    expect(admin.get_by_role("heading", name="Deactivate lena?")).to_be_visible()
    admin.get_by_role("link", name="Cancel").click()
    expect(lena).to_contain_text("active")
    expect(lena.locator(".badge.warn")).to_have_count(0)
    lena.get_by_role("button", name="Make admin").click()
    expect(admin.get_by_role("heading", name="Make lena an admin?")).to_be_visible()
    shot(admin, "user-confirm.png")
    admin.get_by_role("button", name="Make admin").click()
    expect(lena).to_contain_text("admin")
    lena.get_by_role("button", name="Make member").click()
    admin.locator("#confirm").get_by_role("button", name="Make member").click()
    expect(lena.locator(".badge").first).to_have_text("member")
    lena.get_by_role("button", name="Deactivate").click()
    admin.locator("#confirm").get_by_role("button", name="Deactivate").click()
    expect(lena.locator(".badge.warn")).to_have_text("deactivated")
    lena.get_by_role("button", name="Activate").click()  # no confirmation needed
    expect(lena.locator(".badge.warn")).to_have_count(0)

    # Temporary password: shown once; lena must choose her own at sign-in.
    lena.get_by_role("button", name="Temporary password").click()
    admin.locator("#confirm").get_by_role("button", name="Set a temporary password").click()
    temp = admin.locator("#reset-secret").inner_text().strip()
    assert len(temp) == 16
    user = open_page(allowed=(400,), timeout_ms=60_000)
    user.goto(gw.url + "/login/")
    user.get_by_label("Username").fill("lena")
    user.get_by_label("Password").fill(temp)
    user.get_by_role("button", name="Log in").click()
    expect(user.get_by_role("heading", name="Change your password")).to_be_visible()
    expect(user.get_by_text("temporary password from an admin")).to_be_visible()
    user.goto(gw.url + "/keys/")  # anything else leads back to the password page
    expect(user).to_have_url(gw.url + "/password/")
    user.get_by_label("Current password").fill("not-it-at-all")
    user.get_by_label("New password", exact=True).fill(NEW)
    user.get_by_label("New password again").fill(NEW)
    user.get_by_role("button", name="Change password").click()
    expect(user.locator("#old_password-error")).to_contain_text("incorrectly")
    user.get_by_label("Current password").fill(temp)
    user.get_by_label("New password", exact=True).fill(NEW)
    user.get_by_label("New password again").fill(NEW)
    user.get_by_role("button", name="Change password").click()
    expect(user.locator("#password-changed")).to_be_visible()
    user.goto(gw.url + "/keys/")
    expect(user.get_by_role("heading", name="API keys")).to_be_visible()

    # A one-time link: lena sets a password from it, once.
    lena.get_by_role("button", name="Reset link").click()
    admin.locator("#confirm").get_by_role("button", name="Create the link").click()
    link = admin.locator("#reset-secret").inner_text().strip()
    assert link.startswith(gw.url + "/password/reset/")
    shot(admin, "user-reset-link.png")
    anon = open_page(allowed=(400,), timeout_ms=60_000)
    anon.goto(link)
    expect(anon.get_by_role("heading", name="Choose a new password")).to_be_visible()
    anon.get_by_label("New password", exact=True).fill("98765432")
    anon.get_by_label("New password again").fill("98765432")
    anon.get_by_role("button", name="Set password").click()
    expect(anon.locator("#new_password2-error")).to_contain_text("numeric")
    anon.get_by_label("New password", exact=True).fill("copper-" + NEW)
    anon.get_by_label("New password again").fill("copper-" + NEW)
    anon.get_by_role("button", name="Set password").click()
    expect(anon.get_by_role("heading", name="Password set")).to_be_visible()
    anon.goto(link)
    expect(anon.locator("#invalid-link")).to_be_visible()
    log_in(anon, gw.url, "lena", "copper-" + NEW)

    # lena changes her own password from the top bar.
    anon.locator(".topbar").get_by_role("link", name="Password").click()
    anon.get_by_label("Current password").fill("copper-" + NEW)
    anon.get_by_label("New password", exact=True).fill("lena")
    anon.get_by_label("New password again").fill("lena")
    anon.get_by_role("button", name="Change password").click()
    expect(anon.locator("#new_password2-error")).to_contain_text("too short")
    anon.get_by_label("Current password").fill("copper-" + NEW)
    anon.get_by_label("New password", exact=True).fill("violet-" + NEW)
    anon.get_by_label("New password again").fill("violet-" + NEW)
    anon.get_by_role("button", name="Change password").click()
    expect(anon.locator("#password-changed")).to_be_visible()
    # The resets are in the admin-changes log (never the secrets).
    admin.goto(gw.url + "/audit/actions/?action=mlxmanager.user.password_reset")
    expect(admin.locator("table.changes tbody tr")).to_have_count(2)
    assert temp not in admin.content() and link not in admin.content()
