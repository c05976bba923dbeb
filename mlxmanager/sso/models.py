"""Single sign-on settings kept in the database (one row), and the link from an identity at
the provider (issuer + subject) to a local user."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from mlxmanager.audit.models import LoggedModel


class OidcConfig(LoggedModel):
    """The OIDC provider, as saved on /settings/sso/. While no row exists the environment
    (MLXM_OIDC_*) configures SSO; once saved, this row does. The client secret is stored only
    as a JWE, like cloud credentials' secrets (mlxmanager/credentials/crypto.py)."""

    class PasswordLogin(models.TextChoices):
        ALL = "all", "Everyone"
        ADMINS = "admins", "Admins only"

    enabled = models.BooleanField(default=True)
    provider_name = models.CharField(max_length=60, default="SSO", help_text='Shown as "Sign in with …".')
    issuer = models.URLField(max_length=300, blank=True)
    client_id = models.CharField(max_length=200, blank=True)
    secret_jwe = models.TextField(blank=True, editable=False, help_text="The client secret, encrypted.")
    key_id = models.CharField(max_length=32, blank=True, editable=False)
    allowed_domains = models.JSONField(default=list, blank=True, help_text="E-mail domains; empty: any.")
    groups_claim = models.CharField(max_length=100, default="groups")
    admin_group = models.CharField(max_length=200, blank=True, help_text="Empty: roles are not mapped.")
    password_login = models.CharField(max_length=10, choices=PasswordLogin.choices, default=PasswordLogin.ALL)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"SSO ({self.provider_name})"


class OidcIdentity(models.Model):
    """Who a provider's (issuer, subject) is here: the user created at their first sign-in."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities"
    )
    issuer = models.CharField(max_length=300)
    subject = models.CharField(max_length=255)
    email = models.CharField(max_length=254, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_unique")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
