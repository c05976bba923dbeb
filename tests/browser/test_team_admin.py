"""The team gateway in a real browser: an admin creates a member; the member sees only what a
member may (and gets the 403 page elsewhere), creates a key and uses it; the admin adds a
cloud credential (write-only secret, test connection), a routing rule (checked with the
"which rule would serve this?" tester), and finds the traffic with the audit log's filters.

Saves users.png, member-403.png, credentials.png, rules.png and audit.png in docs/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.browser.conftest import NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, stop_gateway
from tests.gateway_fixtures import ADMIN_PASSWORD, fake_upstream, start_routed_gateway  # noqa: F401
from tests.inference.fakes import FakeUpstream

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

MEMBER = ("mia", "long-member-password-42")  # one containing the username is refused
ADMIN_LINKS = ("Pool", "Discover", "Downloads", "Local models", "Routing", "Credentials", "Audit", "Users")


@pytest.fixture(scope="module")
def team(demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_routed_gateway(tmp_path_factory.mktemp("team-browser"), demo_models)
    yield gw
    stop_gateway(gw)


def test_roles_keys_credentials_rules_and_audit_filters(
    team: Gateway,
    fake_upstream: FakeUpstream,  # noqa: F811
    open_page: Callable[..., Any],
) -> None:
    gw = team
    admin = open_page()
    log_in(admin, gw.url, "admin", ADMIN_PASSWORD)
    nav = admin.locator("nav")
    for name in ADMIN_LINKS:
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()

    # ---- Users: the admin creates a member -------------------------------------------
    nav.get_by_role("link", name="Users", exact=True).click()
    expect(admin.get_by_role("heading", name="Users")).to_be_visible()
    admin.get_by_label("Username").fill(MEMBER[0])
    admin.get_by_label("Password").fill(MEMBER[1])
    admin.get_by_label("Role").select_option("member")
    admin.get_by_role("button", name="Create user").click()
    mia_row = admin.locator("#users-panel tbody tr", has=admin.get_by_text(MEMBER[0], exact=True))
    expect(mia_row).to_have_count(1)
    expect(mia_row).to_contain_text("member")
    expect(mia_row.get_by_role("button", name="Make admin")).to_be_visible()
    shot(admin, "users.png")

    # ---- The member: no admin areas, a 403 page when typed in, their own key ---------------
    member = open_page(allowed=(403,))
    log_in(member, gw.url, *MEMBER)
    member_nav = member.locator("nav")
    for name in ADMIN_LINKS:
        expect(member_nav.get_by_role("link", name=name, exact=True)).to_have_count(0)
    expect(member_nav.get_by_role("link", name="Playground", exact=True)).to_be_visible()
    for path in ("/credentials/", "/routing/", "/audit/", "/users/", "/pool/", "/profiles/new/"):
        response = member.goto(gw.url + path)
        assert response is not None and response.status == 403, path
        expect(member.get_by_text("Only admins can open this page.")).to_be_visible()
    shot(member, "member-403.png")

    member_nav.get_by_role("link", name="API keys", exact=True).click()
    member.get_by_label("Name").fill("mia-laptop")
    member.get_by_role("button", name="Create key").click()
    secret = member.locator("#new-key").inner_text().strip()
    assert secret.startswith("mlxm-")
    mia_client = openai.OpenAI(base_url=gw.v1, api_key=secret, max_retries=0, timeout=60)
    answer = mia_client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].finish_reason in ("length", "stop")
    # The member's API access reaches no admin route either.
    assert member.request.get(gw.url + "/api/credentials/").status == 403

    # ---- Credentials: write-only secret, test connection --------------------------------
    nav.get_by_role("link", name="Credentials", exact=True).click()
    form = admin.locator("form", has=admin.get_by_role("button", name="Save credential"))
    form.get_by_label("Name").fill("team-upstream")
    form.get_by_label("Provider").select_option("openai_compatible")
    form.get_by_label("Base URL").fill(fake_upstream.openai_base)
    form.get_by_label("API key").fill(fake_upstream.key)
    form.get_by_role("button", name="Save credential").click()
    cred_row = admin.locator("#cred-panel tbody tr", has=admin.get_by_text("team-upstream", exact=True))
    expect(cred_row).to_have_count(1)
    expect(cred_row.locator(".badge")).to_have_text("encrypted")
    cred_row.get_by_role("button", name="Test").click()
    expect(cred_row.locator(".ok")).to_be_visible()
    assert fake_upstream.key not in admin.content()
    shot(admin, "credentials.png")

    # ---- Routing: a glob rule to the credential, then the tester -------------------------
    nav.get_by_role("link", name="Routing", exact=True).click()
    rule_form = admin.locator("form", has=admin.get_by_role("button", name="Add rule"))
    rule_form.get_by_label("Name", exact=True).fill("cloud-models")
    rule_form.get_by_label("Match").select_option("glob")
    rule_form.get_by_label("Pattern", exact=True).fill("cloud-*")
    rule_form.get_by_label("Targets").fill("team-upstream:upstream-model\nlocal:tiny-random")
    rule_form.get_by_role("button", name="Add rule").click()
    rule_row = admin.locator("#rules-panel tbody tr", has=admin.get_by_text("cloud-models", exact=True))
    expect(rule_row).to_have_count(1)
    expect(rule_row).to_contain_text("team-upstream:upstream-model")
    admin.get_by_label("Which rule would serve").fill("cloud-small")
    admin.locator("#rule-tester").get_by_role("button", name="Test").click()
    expect(admin.locator("#rule-tester")).to_contain_text("cloud-models")
    expect(admin.locator("#rule-tester")).to_contain_text(
        "cloud:team-upstream primary: upstream model 'upstream-model'"
    )
    expect(admin.locator("#rule-tester")).to_contain_text("local:tiny-random fallback 1")
    shot(admin, "rules.png")

    # Traffic through the rule (the member's key) and a local request (the admin's).
    routed = mia_client.chat.completions.create(
        model="cloud-small", messages=[{"role": "user", "content": "route me"}], max_tokens=8
    )
    assert "route me" in (routed.choices[0].message.content or "")
    with pytest.raises(openai.NotFoundError):
        gw.openai().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=4
        )

    # ---- Audit: filters by user, model, backend and status -------------------------------
    nav.get_by_role("link", name="Audit", exact=True).click()
    rows = admin.locator("#audit-rows tr")

    def filter_by(**fields: str) -> None:
        for name, value in fields.items():
            field = admin.locator(f"form.filters [name={name}]")
            if name == "status":
                field.select_option(value)
            else:
                field.fill(value)
        admin.get_by_role("button", name="Filter").click()

    # Rows are flushed in the background: poll the filtered page until they show.
    for _ in range(50):
        filter_by(user=MEMBER[0], model="cloud-small")
        if rows.count() == 1:
            break
        admin.wait_for_timeout(200)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("cloud-small")
    expect(rows.first).to_contain_text("cloud:team-upstream")
    expect(rows.first).to_contain_text(secret[:11])  # the key's prefix: key usage on the audit page
    expect(admin).to_have_url(re.compile(r"/audit/\?.*user=mia.*model=cloud-small"))

    filter_by(user="", model="", backend="local:tiny-random")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("mia")

    filter_by(backend="", status="error")
    expect(rows.filter(has_text="no-such-model")).to_have_count(1)
    expect(rows.filter(has_text="cloud-small")).to_have_count(0)
    shot(admin, "audit.png")
