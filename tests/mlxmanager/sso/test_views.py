"""The SSO pages through Django's test client, against the test OIDC provider over real HTTP:
the client follows the redirect to the provider with httpx, and brings the provider's
redirect back to the gateway's callback."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from mlxmanager.sso.models import OidcConfig
from tests.idp.server import Idp

pytestmark = pytest.mark.django_db


def through_provider(client: Client, start: str = "/login/sso/") -> Any:
    """Start a sign-in, let the provider answer, and return the gateway's callback response."""
    to_idp = client.get(start)
    assert to_idp.status_code == 302 and to_idp["Location"].startswith("http://127.0.0.1:")
    back = httpx.get(to_idp["Location"], follow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    url = urlsplit(back.headers["location"])
    assert url.path == "/login/sso/callback/"
    return client.get(url.path + "?" + url.query)


def test_sign_in_end_to_end(oidc_env: Idp) -> None:
    c = Client()
    login_page = c.get("/login/").content.decode()
    assert "Sign in with Unit IdP" in login_page
    done = through_provider(c, "/login/sso/?next=/keys/")
    assert done.status_code == 302 and done["Location"] == "/keys/"
    alice = get_user_model().objects.get(username="alice")
    assert alice.is_staff and alice.email == "alice@example.com"
    assert c.get("/keys/").status_code == 200
    asked = oidc_env.authorize_requests[-1]
    assert (
        asked["code_challenge_method"] == "S256"
        and asked["nonce"]
        and asked["scope"] == "openid email profile"
    )


def test_an_outside_next_is_ignored(oidc_env: Idp) -> None:
    done = through_provider(Client(), "/login/sso/?next=https://evil.example/")
    assert done.status_code == 302 and done["Location"] == "/"


@pytest.mark.parametrize(
    ("knob", "text"),
    [
        ("audience", "issued for another application (audience)"),
        ("expired", "expired ID token"),
        ("state_suffix", "the state differs"),
    ],
)
def test_bad_answers_are_a_clear_400(oidc_env: Idp, knob: str, text: str) -> None:
    setattr(oidc_env, knob, {"audience": "other-app", "expired": True, "state_suffix": "x"}[knob])
    c = Client()
    refused = through_provider(c)
    assert refused.status_code == 400 and text in refused.content.decode()
    assert not get_user_model().objects.exists()
    assert c.get("/keys/").status_code == 302  # not signed in


def test_a_replayed_callback_is_refused(oidc_env: Idp) -> None:
    c = Client()
    to_idp = c.get("/login/sso/")
    back = urlsplit(httpx.get(to_idp["Location"], follow_redirects=False, timeout=10).headers["location"])
    assert c.get(back.path + "?" + back.query).status_code == 302
    c.logout()
    replay = c.get(back.path + "?" + back.query)
    assert replay.status_code == 400 and "state differs" in replay.content.decode()


@pytest.mark.parametrize(
    "query",
    ["", "?code=x", "?state=x", "?code=x&state=unknown", "?error=access_denied&error_description=nope"],
)
def test_odd_callbacks_are_clear_pages(oidc_env: Idp, query: str) -> None:
    response = Client().get("/login/sso/callback/" + query)
    assert response.status_code in (400, 403)
    assert "Sign-in refused" in response.content.decode()


def test_without_sso_the_pages_say_so() -> None:
    c = Client()
    assert "Sign in with" not in c.get("/login/").content.decode()
    for path in ("/login/sso/", "/login/sso/callback/?code=a&state=b"):
        response = c.get(path)
        assert response.status_code == 404 and "not configured" in response.content.decode()


def test_an_unreachable_provider_is_a_502_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_OIDC_ISSUER", "http://127.0.0.1:1")
    monkeypatch.setenv("MLXM_OIDC_CLIENT_ID", "mlx")
    response = Client().get("/login/sso/")
    assert response.status_code == 502 and "could not be reached" in response.content.decode()


def test_member_password_login_refused_when_sso_is_for_members(
    oidc_env: Idp, monkeypatch: pytest.MonkeyPatch, member: Any, boss: Any
) -> None:
    monkeypatch.setenv("MLXM_PASSWORD_LOGIN", "admins")
    refused = Client().post("/login/", {"username": "member", "password": "pw-member-123456"})
    assert refused.status_code == 200 and "password sign-in is for admins only" in refused.content.decode()
    ok = Client().post("/login/", {"username": "boss", "password": "pw-boss-123456"})
    assert ok.status_code == 302


def test_settings_page_is_for_admins(member_client: Client) -> None:
    assert member_client.get("/settings/sso/").status_code == 403
    assert Client().get("/settings/sso/").status_code == 302


def test_settings_page_saves_and_shows_errors(boss_client: Client, idp: Idp) -> None:
    page = boss_client.get("/settings/sso/")
    assert page.status_code == 200 and "http://testserver/login/sso/callback/" in page.content.decode()
    form = {
        "enabled": "on",
        "provider_name": "Authentik",
        "issuer": idp.url,
        "client_id": "",
        "password_login": "all",
    }
    bad = boss_client.post("/settings/sso/", form)
    assert (
        bad.status_code == 400 and "client id" in bad.content.decode() and "Authentik" in bad.content.decode()
    )
    good = boss_client.post("/settings/sso/", {**form, "client_id": idp.client_id, "client_secret": "abc"})
    assert good.status_code == 200 and "Saved" in good.content.decode()
    row = OidcConfig.objects.get()
    assert row.provider_name == "Authentik" and "abc" not in row.secret_jwe
    assert "Sign in with Authentik" in Client().get("/login/").content.decode()
    # Turning SSO off keeps the settings but hides the button.
    off = boss_client.post("/settings/sso/", {**form, "enabled": "", "client_id": idp.client_id})
    assert off.status_code == 200 and "Sign in with" not in Client().get("/login/").content.decode()


def test_an_issuer_spelled_with_a_final_slash_signs_in(oidc_env: Idp) -> None:
    oidc_env.trailing_slash = True  # Authentik's issuers end in "/"; the setting may not
    done = through_provider(Client())
    assert done.status_code == 302 and get_user_model().objects.filter(username="alice").exists()


def test_a_discovery_document_for_another_issuer_is_refused(oidc_env: Idp) -> None:
    oidc_env.issuer_override = "https://evil.example"
    response = Client().get("/login/sso/")
    assert response.status_code == 502 and "names another issuer" in response.content.decode()
