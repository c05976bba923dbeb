"""The SSO settings in force: the saved row (/settings/sso/) if there is one, else the
environment (MLXM_OIDC_*, MLXM_PASSWORD_LOGIN)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mlxmanager.sso.models import OidcConfig

PASSWORD_LOGIN_CHOICES = ("all", "admins")


def split_domains(text: str) -> list[str]:
    return [d.strip().lower().lstrip("@") for d in text.replace(",", " ").split() if d.strip()]


@dataclass(frozen=True)
class OidcSettings:
    enabled: bool = False
    provider_name: str = "SSO"
    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    allowed_domains: tuple[str, ...] = ()
    groups_claim: str = "groups"
    admin_group: str = ""
    password_login: str = "all"  # noqa: S105 - not a password
    source: str = "environment"

    @property
    def active(self) -> bool:
        """SSO can be used: on, with an issuer and a client id."""
        return self.enabled and bool(self.issuer and self.client_id)

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def from_environment() -> OidcSettings:
    env = os.environ
    issuer = env.get("MLXM_OIDC_ISSUER", "").strip().rstrip("/")
    password_login = env.get("MLXM_PASSWORD_LOGIN", "all").strip().lower()
    return OidcSettings(
        enabled=bool(issuer),
        provider_name=env.get("MLXM_OIDC_PROVIDER_NAME", "").strip() or "SSO",
        issuer=issuer,
        client_id=env.get("MLXM_OIDC_CLIENT_ID", "").strip(),
        client_secret=env.get("MLXM_OIDC_CLIENT_SECRET", "").strip(),
        allowed_domains=tuple(split_domains(env.get("MLXM_OIDC_ALLOWED_DOMAINS", ""))),
        groups_claim=env.get("MLXM_OIDC_GROUPS_CLAIM", "").strip() or "groups",
        admin_group=env.get("MLXM_OIDC_ADMIN_GROUP", "").strip(),
        password_login=password_login if password_login in PASSWORD_LOGIN_CHOICES else "all",
        source="environment",
    )


def saved_row() -> OidcConfig | None:
    return OidcConfig.objects.filter(pk=1).first()


def current() -> OidcSettings:
    row = saved_row()
    if row is None:
        return from_environment()
    secret = ""
    if row.secret_jwe:
        from mlxmanager.credentials import crypto

        try:
            secret = crypto.decrypt(row.secret_jwe)
        except crypto.SecretError:
            secret = ""
    return OidcSettings(
        enabled=row.enabled,
        provider_name=row.provider_name or "SSO",
        issuer=row.issuer.rstrip("/"),
        client_id=row.client_id,
        client_secret=secret,
        allowed_domains=tuple(row.allowed_domains or ()),
        groups_claim=row.groups_claim or "groups",
        admin_group=row.admin_group,
        password_login=row.password_login if row.password_login in PASSWORD_LOGIN_CHOICES else "all",
        source="database",
    )
