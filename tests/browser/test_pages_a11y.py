"""Every page on any screen, for an admin and for a member, in a real chromium against the real
gateway (its worker, the demo models, a fake upstream over real HTTP):

- at 1400, 800 and 390 px nothing is wider than the window, and an axe-core scan (vendored in
  tests/browser/vendor/axe-core, served to the page from the app's origin by the test) finds no
  serious or critical violation;
- no page makes a request to another origin;
- the navigation folds behind an accessible Menu button under 1000 px; the skip link;
- the pool's live refresh never moves keyboard focus;
- unload, deactivate and role change ask first; rules are edited in place; a failed credential
  test reads as an error in words; pinning one profile never shows another as pinned.

Saves the wide and phone screenshots of docs/screenshots/ (ui-*.png).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, stop_gateway
from tests.gateway_fixtures import ADMIN_PASSWORD, Admin, fake_upstream, start_routed_gateway  # noqa: F401
from tests.inference.fakes import FakeUpstream

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_PATH = "/__tests__/axe.min.js"  # answered by the test (page.route), never by the app
WIDTHS = (1400, 800, 390)
MEMBER = ("mia", "long-member-password-42")

ADMIN_PAGES = (
    "/",
    "/playground/",
    "/keys/",
    "/api/docs",
    "/profiles/",
    "/profiles/new/",
    "/pool/",
    "/models/discover/",
    "/downloads/",
    "/models/local/",
    "/routing/",
    "/credentials/",
    "/workers/",
    "/audit/",
    "/audit/actions/",
    "/users/",
    "/logs/",
    "/docs/v1/",
    "/connect/",
    "/usage/",
    "/usage/budgets/",
    "/keys/team/",
    "/admin-tokens/",
    "/settings/",
    "/settings/sso/",
    "/password/",
)
MEMBER_PAGES = (
    "/",
    "/playground/",
    "/keys/",
    "/api/docs",
    "/docs/v1/",
    "/connect/",
    "/usage/",
    "/profiles/",
    "/password/",
    "/pool/",
)  # /pool/: the 403 page
# Swagger UI's pages: scanned with their operations open and one in "Try it out" mode (what a
# reader sees), not just the collapsed list.
DOCS_PAGES = ("/api/docs", "/docs/v1/")
SHOTS = {"/": "home", "/pool/": "pool", "/profiles/": "profiles", "/routing/": "rules", "/audit/": "audit"}


@pytest.fixture(scope="module")
def team(
    demo_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    fake_upstream: FakeUpstream,  # noqa: F811
) -> Iterator[Gateway]:
    """A gateway with something on every page: a member, a credential (one that answers, one that
    can't be reached), a rule, a loaded model, audit rows."""
    gw = start_routed_gateway(tmp_path_factory.mktemp("a11y"), demo_models)
    admin = Admin(gw, "admin", ADMIN_PASSWORD)
    admin.ok("POST", "/users/", json={"username": MEMBER[0], "password": MEMBER[1], "role": "member"})
    admin.credential(fake_upstream, "openai_compatible", name="team-upstream")
    admin.ok(
        "POST",
        "/credentials/",
        json={
            "name": "nowhere",
            "provider": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "secret": "k",
        },
    )
    admin.rule(
        "cloud-*", {"credential": "team-upstream", "model": "upstream-model"}, match_type="glob", name="cloud"
    )
    answer = gw.openai().chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices
    yield gw
    stop_gateway(gw)


def _settle(page: Any) -> None:
    """Two animation frames: the layout after a resize or a swap has been computed."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _serve_axe(page: Any, base: str) -> None:
    page.route(base + AXE_PATH, lambda route: route.fulfill(path=str(AXE), content_type="text/javascript"))


def _axe(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page, one line per element."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=AXE_PATH)
    found = page.evaluate(
        """async () => {
          const r = await axe.run(document, {resultTypes: ["violations"]});
          return r.violations.filter(v => v.impact === "serious" || v.impact === "critical")
            .flatMap(v => v.nodes.map(n => `${v.id} (${v.impact}): ${n.target.join(" ")}: ${n.failureSummary}`));
        }"""
    )
    return list(found)


def _overflow(page: Any) -> dict[str, Any] | None:
    """None when the page fits the window; else its width and the widest elements."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => {
          const se = document.scrollingElement;
          if (se.scrollWidth <= innerWidth) return null;
          const wide = [...document.querySelectorAll("body *")]
            .filter(el => el.getBoundingClientRect().right > innerWidth + 0.5)
            .slice(0, 8).map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
              + (el.className && typeof el.className === "string" ? "." + el.className.split(" ").join(".") : ""));
          return {scrollWidth: se.scrollWidth, innerWidth, wide};
        }"""
    )


def _open_operations(page: Any) -> None:
    """Swagger UI rendered, a dozen operations expanded, the first in "Try it out" mode."""
    summaries = page.locator(".opblock-summary-control")
    expect(summaries.first).to_be_visible()
    for i in range(min(summaries.count(), 12)):
        summaries.nth(i).click()
    page.get_by_role("button", name="Try it out").first.click()
    expect(page.get_by_role("button", name="Execute").first).to_be_visible()


def _check_page(page: Any, url: str, path: str, name: str) -> list[str]:
    """What is wrong with the page at each width, one line per problem and element."""
    problems: dict[str, list[int]] = {}
    page.goto(url + path)
    if path in DOCS_PAGES:
        _open_operations(page)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        _settle(page)
        found = [f"{h1} h1 headings"] if (h1 := page.locator("h1:visible").count()) != 1 else []
        if wide := _overflow(page):
            found.append(f"wider than the window: {json.dumps(wide)}")
        found += _axe(page)
        for problem in found:
            problems.setdefault(problem, []).append(width)
        if path == "/docs/v1/" and name == "admin" and width == 390:
            shot(page, "v1-reference-open-phone.png")
        if path in SHOTS and name == "admin" and width in (1400, 390):
            shot(page, f"ui-{SHOTS[path]}-{'wide' if width == 1400 else 'phone'}.png")
    return [f"{name} {path} at {widths} px: {problem}" for problem, widths in problems.items()]


def test_every_admin_page_fits_and_passes_axe(team: Gateway, open_page: Callable[..., Any]) -> None:
    page = open_page(timeout_ms=30_000)
    _serve_axe(page, team.url)
    log_in(page, team.url, "admin", ADMIN_PASSWORD)
    problems = [p for path in ADMIN_PAGES for p in _check_page(page, team.url, path, "admin")]
    assert not problems, "\n".join(problems)


def test_every_member_page_and_the_login_page_fit_and_pass_axe(
    team: Gateway, open_page: Callable[..., Any]
) -> None:
    page = open_page(allowed=(403,), timeout_ms=30_000)
    _serve_axe(page, team.url)
    problems = _check_page(page, team.url, "/login/", "anonymous")
    log_in(page, team.url, *MEMBER)
    problems += [p for path in MEMBER_PAGES for p in _check_page(page, team.url, path, "member")]
    assert not problems, "\n".join(problems)


def test_no_page_requests_another_origin(team: Gateway, open_page: Callable[..., Any]) -> None:
    page = open_page(timeout_ms=30_000)
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    log_in(page, team.url, "admin", ADMIN_PASSWORD)
    for path in ADMIN_PAGES:
        page.goto(team.url + path, wait_until="networkidle" if path in ("/api/docs", "/docs/v1/") else "load")
        _settle(page)
    origin = urlsplit(team.url).netloc
    assert len(seen) > len(ADMIN_PAGES)  # the pages and their assets were all recorded
    foreign = [u for u in seen if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != origin]
    assert not foreign, foreign


@pytest.fixture
def admin_page(team: Gateway, open_page: Callable[..., Any]) -> Any:
    page = open_page(allowed=(400,), timeout_ms=30_000)  # 400: a refused form, on purpose
    log_in(page, team.url, "admin", ADMIN_PASSWORD)
    return page


def test_menu_button_skip_link_and_top_bar(team: Gateway, admin_page: Any) -> None:
    page = admin_page
    nav = page.get_by_role("navigation", name="Main")
    menu = page.get_by_role("button", name="Menu")
    # Wide: the grouped navigation is shown, no menu button.
    page.set_viewport_size({"width": 1400, "height": 900})
    expect(menu).to_be_hidden()
    expect(nav.get_by_role("link", name="Credentials")).to_be_visible()
    for group in ("Use", "Models", "Gateway", "Admin"):
        expect(nav.get_by_role("list", name=group)).to_be_visible()
    # The user and the role, told apart.
    expect(page.locator(".who-name")).to_have_text("admin")
    expect(page.locator(".role-badge")).to_have_text("role: Admin")

    # Narrow: folded behind the button, which says whether it is open; Escape closes it.
    page.set_viewport_size({"width": 800, "height": 900})
    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(nav.get_by_role("link", name="Credentials")).to_be_hidden()
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    nav.get_by_role("link", name="Credentials").click()
    expect(page.get_by_role("heading", name="Cloud credentials", level=1)).to_be_visible()
    expect(nav.get_by_role("link", name="Credentials")).to_be_hidden()  # a new page: closed again
    menu.click()
    expect(nav.get_by_role("link", name="Routing")).to_be_visible()
    page.keyboard.press("Escape")
    expect(nav.get_by_role("link", name="Routing")).to_be_hidden()
    expect(menu).to_be_focused()
    page.set_viewport_size({"width": 390, "height": 844})
    menu.click()
    expect(nav.get_by_role("link", name="Users")).to_be_visible()
    shot(page, "ui-menu-phone.png")
    menu.click()

    # The skip link is the first tab stop and lands on the page's content.
    page.goto(team.url + "/profiles/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


def test_the_pool_refresh_never_moves_focus(team: Gateway, admin_page: Any) -> None:
    page = admin_page
    page.goto(team.url + "/pool/")
    live = page.locator("#pool-live")
    button = page.get_by_role("button", name="Load smollm2-135m-instruct")
    button.focus()
    button.evaluate("el => { el.marked = 'yes'; }")  # the same element, not a look-alike
    seen = int(live.get_attribute("data-updates") or 0)
    # Two refreshes of the live partial (every 2 s) while the button has focus.
    expect(live).to_have_attribute("data-updates", str(seen + 2), timeout=15_000)
    expect(button).to_be_focused()
    assert page.evaluate("() => document.activeElement.marked") == "yes"


def test_unload_asks_first(team: Gateway, admin_page: Any) -> None:
    page = admin_page
    asked: list[str] = []

    def answer(accept: bool) -> None:
        def on_dialog(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", on_dialog)

    page.goto(team.url + "/pool/")
    row = page.locator('#loaded-models tr[data-model="tiny-random"]')
    if not row.count():
        page.get_by_role("button", name="Load tiny-random").click()
    expect(row).to_have_count(1)
    answer(False)
    row.get_by_role("button", name="Unload tiny-random").click()
    expect(row).to_have_count(1)  # dismissed: still loaded
    answer(True)
    row.get_by_role("button", name="Unload tiny-random").click()
    expect(page.locator("#pool-message")).to_have_text("Unloaded tiny-random.")
    expect(row).to_have_count(0)
    assert asked[0].startswith("Unload tiny-random?") and asked[1] == asked[0]

    # Deactivate and role changes answer with a confirm page first (tests/browser/test_audit_and_users.py).


def test_rules_are_edited_in_place(team: Gateway, admin_page: Any) -> None:
    page = admin_page
    page.goto(team.url + "/routing/")
    page.get_by_role("button", name="Edit rule cloud", exact=True).click()
    form = page.get_by_role("form", name="Edit rule cloud", exact=True)
    expect(form.get_by_label("Pattern")).to_have_value("cloud-*")
    expect(form.get_by_label("Targets")).to_have_value("team-upstream:upstream-model")
    form.get_by_label("Pattern").fill("(a+)+")
    form.get_by_label("Match").select_option("regex")
    form.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("nested repetition")
    expect(form.get_by_label("Pattern")).to_have_value("(a+)+")  # the form stays, with what was typed
    form.get_by_label("Match").select_option("glob")
    form.get_by_label("Pattern").fill("cloudy-*")
    form.get_by_label("Targets").fill("team-upstream:upstream-model\nlocal:tiny-random")
    form.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved rule 'cloud'.")
    row = page.locator("#rules-panel tbody tr", has=page.get_by_text("cloud", exact=True))
    expect(row).to_contain_text("cloudy-*")
    expect(row).to_contain_text("local:tiny-random")
    page.get_by_label("Which rule would serve").fill("cloudy-small")
    page.locator("#rule-tester").get_by_role("button", name="Test").click()
    expect(page.locator("#rule-tester")).to_contain_text("Rule cloud")


def test_a_failed_credential_test_is_an_error_in_words(team: Gateway, admin_page: Any) -> None:
    page = admin_page
    page.goto(team.url + "/credentials/")
    row = page.locator("#cred-panel tbody tr", has=page.get_by_text("nowhere", exact=True))
    row.get_by_role("button", name="Test").click()
    alert = page.locator("#cred-panel").get_by_role("alert")
    expect(alert).to_have_text(
        "The test of 'nowhere' failed: could not connect to http://127.0.0.1:9/v1; "
        "check the base URL and that the server is running."
    )
    expect(alert).to_have_class("error")
    expect(page.locator("#cred-panel .notice")).to_have_count(0)
    expect(row.locator(".error")).to_contain_text("could not connect")
