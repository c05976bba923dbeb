"""Single sign-on in a real browser (Debian's chromium) against a real OpenID Connect
provider on 127.0.0.1 (tests/idp/server.py: discovery, JWKS, RS256 ID tokens, PKCE).

The gateway is configured by the environment (MLXM_OIDC_*): only example.com addresses,
members of the `mlx-admins` group become admins, and password sign-in is for admins only.
Each refusal (another audience, an expired ID token, a tampered state, a domain not
allowed, a member's password) ends on a clear page, never a 500.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import ADMIN, NEEDS_CHROMIUM, log_in, shot
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.idp.server import Idp, IdpUser

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live"), NEEDS_CHROMIUM]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

PROVIDER = "Test IdP"
ALICE = IdpUser("sub-alice", "alice@example.com", "alice", groups=["staff", "mlx-admins"])
BOB = IdpUser("sub-bob", "bob@example.com", "bob", groups=["staff"])


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    provider = Idp().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def sso_gateway(
    demo_models: dict[str, Path], idp: Idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    env = {
        "MLXM_OIDC_ISSUER": idp.url,
        "MLXM_OIDC_CLIENT_ID": idp.client_id,
        "MLXM_OIDC_CLIENT_SECRET": idp.client_secret,
        "MLXM_OIDC_PROVIDER_NAME": PROVIDER,
        "MLXM_OIDC_ALLOWED_DOMAINS": "example.com",
        "MLXM_OIDC_GROUPS_CLAIM": "groups",
        "MLXM_OIDC_ADMIN_GROUP": "mlx-admins",
        "MLXM_PASSWORD_LOGIN": "admins",
    }
    gw = start_gateway(tmp_path_factory.mktemp("gateway-sso"), demo_models, extra_env=env)
    yield gw
    stop_gateway(gw)


@pytest.fixture(autouse=True)
def _well_behaved_provider(idp: Idp) -> Iterator[None]:
    idp.reset()
    idp.user = ALICE
    yield
    idp.reset()


def sso_sign_in(page, gw: Gateway) -> None:  # type: ignore[no-untyped-def]
    page.goto(gw.url + "/login/")
    page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()


def test_sso_sign_in_creates_the_user_and_maps_the_role(sso_gateway, idp, open_page) -> None:  # type: ignore[no-untyped-def]
    gw = sso_gateway
    page = open_page(allowed=(403,))
    page.goto(gw.url + "/keys/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/keys/$"))
    expect(page.get_by_role("link", name=f"Sign in with {PROVIDER}")).to_be_visible()
    shot(page, "login-sso.png")

    # Alice is in mlx-admins: created at her first sign-in, as an admin, back where she went.
    page.get_by_role("link", name=f"Sign in with {PROVIDER}").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    expect(page).to_have_url(gw.url + "/keys/")
    expect(page.locator(".who-name")).to_have_text("alice")
    expect(page.locator(".role-badge")).to_contain_text("Admin")

    # The flow was the code flow with PKCE (S256) and a nonce; the token request carried the
    # verifier and the client's secret.
    asked = idp.authorize_requests[-1]
    assert asked["response_type"] == "code" and asked["code_challenge_method"] == "S256"
    assert asked["nonce"] and asked["state"] and asked["redirect_uri"] == gw.url + "/login/sso/callback/"
    assert idp.token_requests[-1]["code_verifier"] and idp.token_requests[-1]["client_id"] == idp.client_id

    page.goto(gw.url + "/users/")
    alice_row = page.locator("tr", has=page.get_by_text("alice", exact=False))
    expect(alice_row.locator(".badge").first).to_have_text("admin")

    # Bob is not: a member, who can't open the admin pages.
    idp.user = BOB
    bob = open_page(allowed=(403,))
    sso_sign_in(bob, gw)
    expect(bob.locator(".who-name")).to_have_text("bob")
    expect(bob.locator(".role-badge")).to_contain_text("Member")
    expect(bob.get_by_role("heading", name="Home")).to_be_visible()
    response = bob.goto(gw.url + "/users/")
    assert response is not None and response.status == 403

    # Roles follow the group at every sign-in: Bob added to mlx-admins is an admin next time.
    idp.user = IdpUser(BOB.sub, BOB.email, BOB.preferred_username, groups=["mlx-admins"])
    bob.get_by_role("button", name=re.compile("Log out", re.I)).click()
    sso_sign_in(bob, gw)
    expect(bob.locator(".who-name")).to_have_text("bob")
    expect(bob.locator(".role-badge")).to_contain_text("Admin")
    idp.user = BOB  # and a member again after that
    bob.get_by_role("button", name=re.compile("Log out", re.I)).click()
    sso_sign_in(bob, gw)
    expect(bob.locator(".who-name")).to_have_text("bob")
    expect(bob.locator(".role-badge")).to_contain_text("Member")

    # One account per identity: Alice signing in again is the same user.
    page.reload()
    users = page.locator("#users-panel tbody tr")
    expect(users.filter(has_text="alice")).to_have_count(1)


@pytest.mark.parametrize(
    ("knob", "message"),
    [
        ("audience", "issued for another application (audience)"),
        ("expired", "sent an expired ID token"),
        ("state", "does not match the one this browser started"),
    ],
)
def test_bad_sign_ins_are_refused_with_a_clear_page(
    sso_gateway, idp, open_page, knob: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    gw = sso_gateway
    if knob == "audience":
        idp.audience = "some-other-app"
    elif knob == "expired":
        idp.expired = True
    else:
        idp.state_suffix = "-tampered"
    page = open_page(allowed=(400,))
    sso_sign_in(page, gw)
    expect(page.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(message)
    expect(page).to_have_url(re.compile(r"/login/sso/callback/\?"))
    if knob == "audience":
        shot(page, "sso-refused.png")
    # Not signed in: the home page sends us to the login page.
    page.goto(gw.url + "/")
    expect(page).to_have_url(re.compile(r"/login/"))
    # And the provider behaving again, the same browser signs in.
    idp.reset()
    sso_sign_in(page, gw)
    expect(page.locator(".who-name")).to_have_text("alice")
    expect(page.locator(".role-badge")).to_contain_text("Admin")


def test_a_domain_not_allowed_is_refused(sso_gateway, idp, open_page) -> None:  # type: ignore[no-untyped-def]
    idp.user = IdpUser("sub-eve", "eve@elsewhere.test", "eve", groups=["mlx-admins"])
    page = open_page(allowed=(403,))
    sso_sign_in(page, sso_gateway)
    expect(page.get_by_role("alert")).to_contain_text("Accounts at elsewhere.test may not sign in here")
    db = sqlite3.connect(sso_gateway.data_dir / "mlxmanager.sqlite3")
    try:
        assert db.execute("select count(*) from auth_user where username = 'eve'").fetchone() == (0,)
    finally:
        db.close()


def test_password_sign_in_is_for_admins_only(sso_gateway, open_page) -> None:  # type: ignore[no-untyped-def]
    gw = sso_gateway
    admin = open_page()
    log_in(admin, gw.url)  # admins keep their password: nobody is locked out
    admin.goto(gw.url + "/users/")
    admin.get_by_label("Username").fill("carol")
    admin.get_by_label("Password").fill("violet-tractor-harbour-42")
    admin.get_by_role("button", name="Create user").click()
    expect(admin.get_by_role("status")).to_contain_text("Created carol (member)")

    page = open_page()
    page.goto(gw.url + "/login/")
    expect(
        page.get_by_text(f"Members sign in with {PROVIDER}; password sign-in is for admins.")
    ).to_be_visible()
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill("violet-tractor-harbour-42")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text(
        f"Members sign in with {PROVIDER}: password sign-in is for admins only."
    )
    expect(page).to_have_url(re.compile(r"/login/"))


def test_sso_settings_page_checks_the_issuer_and_encrypts_the_secret(sso_gateway, idp, open_page) -> None:  # type: ignore[no-untyped-def]
    gw = sso_gateway
    page = open_page(allowed=(400,))
    log_in(page, gw.url, *ADMIN)
    page.goto(gw.url + "/settings/sso/")
    expect(page.get_by_role("heading", name="Single sign-on")).to_be_visible()
    expect(page.locator("#redirect-uri")).to_have_text(gw.url + "/login/sso/callback/")
    # The form starts from the environment's settings.
    expect(page.get_by_label("Issuer")).to_have_value(idp.url)
    expect(page.get_by_label("Admin group")).to_have_value("mlx-admins")

    # An issuer without a discovery document: refused with a clear message, the form kept.
    page.get_by_label("Issuer").fill(idp.url + "/nowhere")
    page.get_by_role("button", name="Save SSO settings").click()
    expect(page.get_by_role("alert")).to_contain_text("answered HTTP 404, not a discovery document")
    expect(page.get_by_label("Issuer")).to_have_value(idp.url + "/nowhere")
    # A discovery document that names another issuer: refused too.
    idp.issuer_override = "https://evil.example"
    page.get_by_label("Issuer").fill(idp.url)
    page.get_by_role("button", name="Save SSO settings").click()
    expect(page.get_by_role("alert")).to_contain_text("names the issuer 'https://evil.example'")
    idp.issuer_override = None

    # The same settings, saved in the database, with the secret typed in.
    page.get_by_label("Issuer").fill(idp.url)
    page.get_by_label("Client secret").fill(idp.client_secret)
    page.get_by_role("button", name="Save SSO settings").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_text("settings from the database, SSO on")).to_be_visible()
    shot(page, "sso-settings.png")

    db = sqlite3.connect(gw.data_dir / "mlxmanager.sqlite3")
    try:
        jwe, kid = db.execute("select secret_jwe, key_id from sso_oidcconfig").fetchone()
        data = db.execute(
            "select data from audit_adminaction where action = 'mlxmanager.sso.changed'"
        ).fetchone()[0]
    finally:
        db.close()
    assert idp.client_secret not in jwe and jwe.count(".") == 4 and kid  # a compact JWE
    assert idp.client_secret not in data and '"secret": "(changed)"' in data

    # Sign-in keeps working from the saved settings (the secret decrypted for the token request).
    other = open_page()
    sso_sign_in(other, gw)
    expect(other.locator(".who-name")).to_have_text("alice")
    expect(other.locator(".role-badge")).to_contain_text("Admin")
