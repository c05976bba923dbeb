"""SSO services against the test OIDC provider on 127.0.0.1 (tests/idp/server.py)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from mlxmanager.audit.models import AdminAction
from mlxmanager.credentials import crypto
from mlxmanager.errors import DomainError
from mlxmanager.sso import selectors, services
from mlxmanager.sso.models import OidcConfig, OidcIdentity
from mlxmanager.sso.selectors import OidcSettings
from tests.idp.server import Idp

pytestmark = pytest.mark.django_db
ISSUER = "https://idp.example.com"
SETTINGS = OidcSettings(
    enabled=True, issuer=ISSUER, client_id="mlx", admin_group="mlx-admins", allowed_domains=("example.com",)
)


def claims(**kw: Any) -> dict[str, Any]:
    return {
        "sub": "s-1",
        "email": "ann@example.com",
        "email_verified": True,
        "preferred_username": "ann",
        **kw,
    }


def test_discovery_accepts_a_provider_that_fits(idp: Idp) -> None:
    meta = services.discover(idp.url + "/")
    assert meta["jwks_uri"] == idp.url + "/jwks"


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("ftp://idp.example.com", "must be an http(s) URL"),
        ("https://idp.example.com/?a=1", "no query"),
        ("http://127.0.0.1:1", "could not fetch"),
        ("http://[::1", "not a valid URL"),
        ("http://idp.example.com:99999", "not a valid URL"),
    ],
)
def test_discovery_refuses_bad_issuers(issuer: str, message: str) -> None:
    with pytest.raises(DomainError, match=re.escape(message)) as exc:
        services.discover(issuer)
    assert exc.value.param == "issuer"


def test_discovery_refuses_a_document_for_another_issuer_or_without_rs256(
    idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    idp.issuer_override = "https://other.example"
    with pytest.raises(DomainError, match="names the issuer 'https://other.example'"):
        services.discover(idp.url)
    idp.issuer_override = None
    original = idp.discovery
    monkeypatch.setattr(
        idp, "discovery", lambda: {**original(), "id_token_signing_alg_values_supported": ["HS256"]}
    )
    with pytest.raises(DomainError, match="RS256"):
        services.discover(idp.url)
    monkeypatch.setattr(
        idp, "discovery", lambda: {**original(), "code_challenge_methods_supported": ["plain"]}
    )
    with pytest.raises(DomainError, match="PKCE"):
        services.discover(idp.url)


def test_config_save_encrypts_the_secret_and_audits_without_it(idp: Idp, boss: Any) -> None:
    row = services.config_save(
        user=boss, enabled=True, provider_name="Keycloak", issuer=idp.url, client_id=idp.client_id,
        client_secret="the-client-secret", allowed_domains="example.com example.org", admin_group="mlx-admins",
        password_login="admins",
    )  # fmt: skip
    assert "the-client-secret" not in row.secret_jwe and crypto.decrypt(row.secret_jwe) == "the-client-secret"
    action = AdminAction.objects.get(action="mlxmanager.sso.changed")
    assert action.actor_name == "boss" and "the-client-secret" not in str(action.data)
    assert action.data["secret"] == "(changed)" and action.data["client_id"] == [None, idp.client_id]
    # A blank secret keeps the stored one.
    services.config_save(
        user=boss, enabled=True, provider_name="Keycloak", issuer=idp.url, client_id=idp.client_id
    )
    assert selectors.current().client_secret == "the-client-secret"
    assert OidcConfig.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"client_id": ""}, "client_id"),
        ({"client_id": "a b"}, "client_id"),
        ({"allowed_domains": "not a domain!"}, "allowed_domains"),
        ({"groups_claim": "two words"}, "groups_claim"),
        ({"password_login": "nobody"}, "password_login"),
        ({"provider_name": "x" * 61}, "provider_name"),
        ({"client_secret": "two\nlines"}, "client_secret"),
        ({"enabled": False, "password_login": "admins"}, "password_login"),
        ({"issuer": "not a url"}, "issuer"),
        ({"provider_name": "Key\x00cloak"}, "provider_name"),
        ({"admin_group": "a\x1bb"}, "admin_group"),
    ],
)
def test_config_save_refuses_bad_values_with_a_clear_error(
    fields: dict[str, Any], param: str, boss: Any
) -> None:
    values: dict[str, Any] = {
        "enabled": True,
        "provider_name": "SSO",
        "issuer": ISSUER,
        "client_id": "mlx",
        **fields,
    }
    with pytest.raises(DomainError) as exc:
        services.config_save(user=boss, check_discovery=False, **values)
    assert exc.value.param == param and exc.value.message
    assert not OidcConfig.objects.exists()


def test_first_sign_in_creates_the_user_with_the_role_of_the_group(boss: Any) -> None:
    ann = services.user_for_claims(claims(groups=["staff", "mlx-admins"]), SETTINGS)
    assert ann.username == "ann" and ann.is_staff and not ann.has_usable_password()
    assert OidcIdentity.objects.get(user=ann).subject == "s-1"
    # The next sign-in finds the same user; out of the group, she is a member.
    again = services.user_for_claims(claims(groups=["staff"]), SETTINGS)
    assert again.pk == ann.pk and not again.is_staff


def test_a_taken_username_is_not_taken_over(member: Any) -> None:
    user = services.user_for_claims(claims(preferred_username="member"), SETTINGS)
    assert user.pk != member.pk and user.username == "member-2"


def test_nested_groups_claim_and_no_admin_group() -> None:
    keycloak = OidcSettings(
        enabled=True, issuer=ISSUER, client_id="mlx", admin_group="admin", groups_claim="realm_access.roles"
    )
    assert services.role_for({"realm_access": {"roles": ["admin"]}}, keycloak) == "admin"
    assert services.role_for({"realm_access": "odd"}, keycloak) == "member"
    assert services.role_for({"groups": "mlx-admins"}, SETTINGS) == "admin"
    assert services.role_for({"groups": ["mlx-admins"]}, OidcSettings()) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"email": "eve@elsewhere.test"}, "Accounts at elsewhere.test may not sign in here"),
        ({"email": ""}, "sent no e-mail address"),
        ({"email_verified": False}, "is not verified"),
        ({"sub": ""}, "names no subject"),
    ],
)
def test_refusals(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(services.SsoRefused, match=message):
        services.user_for_claims(claims(**extra), SETTINGS)
    assert not get_user_model().objects.exists()


def test_a_deactivated_user_is_refused() -> None:
    ann = services.user_for_claims(claims(), SETTINGS)
    ann.is_active = False
    ann.save()
    with pytest.raises(services.SsoRefused, match="deactivated") as exc:
        services.user_for_claims(claims(), SETTINGS)
    assert exc.value.status == 403


def test_the_last_admin_is_not_demoted_by_the_provider() -> None:
    ann = services.user_for_claims(claims(groups=["mlx-admins"]), SETTINGS)
    assert services.user_for_claims(claims(groups=[]), SETTINGS).is_staff and ann.is_staff


def test_password_login_for_members_follows_the_setting(
    oidc_env: Idp, monkeypatch: pytest.MonkeyPatch, member: Any, boss: Any
) -> None:
    assert services.password_login_allowed(member)
    monkeypatch.setenv("MLXM_PASSWORD_LOGIN", "admins")
    assert not services.password_login_allowed(member) and services.password_login_allowed(boss)
    monkeypatch.delenv("MLXM_OIDC_ISSUER")  # SSO off: nobody is locked out
    assert services.password_login_allowed(member)


def test_key_rotation_reseals_the_client_secret(idp: Idp, boss: Any) -> None:
    from django.core.management import call_command

    services.config_save(
        user=boss, enabled=True, provider_name="K", issuer=idp.url, client_id="c", client_secret="cs-1"
    )
    old_kid = OidcConfig.objects.get().key_id
    call_command("credentials_rotate_key", stdout=io.StringIO())
    row = OidcConfig.objects.get()
    assert row.key_id != old_kid and row.key_id == crypto.keyring.current.kid
    call_command("credentials_rotate_key", "--prune", stdout=io.StringIO())
    assert selectors.current().client_secret == "cs-1"
