from __future__ import annotations

import pytest

from mlxmanager.credentials import crypto
from mlxmanager.sso import selectors
from mlxmanager.sso.models import OidcConfig

pytestmark = pytest.mark.django_db


def test_nothing_configured_means_no_sso() -> None:
    s = selectors.current()
    assert s.source == "environment" and not s.active and s.password_login == "all"


def test_the_environment_configures_sso(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_OIDC_ISSUER", "https://idp.example.com/realms/team/")
    monkeypatch.setenv("MLXM_OIDC_CLIENT_ID", "mlx")
    monkeypatch.setenv("MLXM_OIDC_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("MLXM_OIDC_ALLOWED_DOMAINS", "Example.com, @example.org")
    monkeypatch.setenv("MLXM_OIDC_ADMIN_GROUP", "admins")
    monkeypatch.setenv("MLXM_OIDC_GROUPS_CLAIM", "realm_access.roles")
    monkeypatch.setenv("MLXM_PASSWORD_LOGIN", "ADMINS")
    s = selectors.current()
    assert s.active and s.issuer == "https://idp.example.com/realms/team"
    assert s.metadata_url == "https://idp.example.com/realms/team/.well-known/openid-configuration"
    assert s.allowed_domains == ("example.com", "example.org")
    assert (s.client_id, s.admin_group, s.groups_claim, s.password_login) == (
        "mlx",
        "admins",
        "realm_access.roles",
        "admins",
    )
    assert "s3cret" not in repr(s)


def test_an_unknown_password_login_value_keeps_passwords_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_PASSWORD_LOGIN", "nobody")
    assert selectors.current().password_login == "all"


def test_a_saved_row_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXM_OIDC_ISSUER", "https://env.example.com")
    monkeypatch.setenv("MLXM_OIDC_CLIENT_ID", "env")
    token, kid = crypto.encrypt("db-secret")
    OidcConfig.objects.create(
        pk=1, enabled=False, issuer="https://db.example.com", client_id="db", secret_jwe=token, key_id=kid
    )
    s = selectors.current()
    assert (s.source, s.issuer, s.client_id, s.client_secret, s.active) == (
        "database",
        "https://db.example.com",
        "db",
        "db-secret",
        False,
    )
