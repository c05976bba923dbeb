from __future__ import annotations

import fnmatch

from django.conf import settings
from django.db import models
from django.utils import timezone

_GLOB_CHARS = frozenset("*?[")


class ApiKey(models.Model):
    """A client credential. Only a SHA-256 digest of the secret is stored.

    Keys are 256-bit random tokens, so a fast unsalted digest is safe and lets a
    request find its key with one indexed lookup.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="First characters, shown to recognise the key.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Limits (empty: none). Model names are what clients send (profiles or routed names).
    allowed_models = models.JSONField(default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute.")
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt + completion tokens per UTC day."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def allows(self, model: str) -> bool:
        """Empty: every model. Entries are names (a profile, an exact rule) or a glob rule's
        pattern such as `claude-*` (matched like the rule: whole name, case-sensitive)."""
        if not self.allowed_models or model in self.allowed_models:
            return True
        return any(
            _GLOB_CHARS & set(entry) and fnmatch.fnmatchcase(model, entry) for entry in self.allowed_models
        )

    def is_active(self, *, now: object = None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now  # type: ignore[operator]


class UserLimits(models.Model):
    """A user's own limits, over all their traffic (every key and the playground); empty: none."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute.")
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt + completion tokens per UTC day."
    )

    def __str__(self) -> str:
        return f"limits of user {self.user_id}"


class StreamTokenGeneration(models.Model):
    """Bumped when the user logs out: stream tokens (mlxmanager/accounts/tokens.py) carry the
    generation they were minted in, and one minted before the bump is refused. No row: 0."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    generation = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"stream tokens of user {self.user_id}: generation {self.generation}"


class AdminToken(models.Model):
    """A token for scripts and CI on the management API (`Authorization: Bearer mlxa-...`).

    Hashed like API keys (SHA-256 of a 256-bit secret); acts as the admin who created it (who
    must still be an active admin); `read` tokens may only GET; every token expires. API keys
    never work on /api and admin tokens never work on /v1 (separate tables and prefixes).
    """

    SCOPE_READ = "read"
    SCOPE_WRITE = "write"
    SCOPES = ((SCOPE_READ, "read"), (SCOPE_WRITE, "read and write"))

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=8, choices=SCOPES, default=SCOPE_READ)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_active(self, *, now: object = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.expires_at > now  # type: ignore[operator]


class PasswordChangeRequired(models.Model):
    """The user signs in with a temporary password an admin gave them and must choose their own
    before anything else (mlxmanager/accounts/middleware.py). Removed when they change it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"user {self.user_id} must change their password"
