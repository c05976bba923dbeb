from __future__ import annotations

from django.db import models
from django.utils import timezone

from mlxmanager.audit.models import LoggedModel

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


class Credential(LoggedModel):
    """An API key for a cloud (or self-hosted) provider. The secret is stored only as a JWE.

    Base URLs follow each SDK's convention: OpenAI-style ones end in `/v1`
    (`https://api.openai.com/v1`), Anthropic-style ones don't (`https://api.anthropic.com`).
    """

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
        ANTHROPIC_COMPATIBLE = "anthropic_compatible", "Anthropic-compatible"

    name = models.SlugField(max_length=64, unique=True, help_text="How rules and the audit log name it.")
    provider = models.CharField(max_length=24, choices=Provider.choices)
    base_url = models.URLField(max_length=300, blank=True, help_text="Blank: the provider's own API.")
    secret_jwe = models.TextField(editable=False, help_text="The API key, encrypted (compact JWE).")
    key_id = models.CharField(max_length=32, editable=False, help_text="Which encryption key sealed it.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_tested_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_message = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def protocol(self) -> str:
        """The wire protocol: "openai" or "anthropic"."""
        return "anthropic" if self.provider.startswith("anthropic") else "openai"

    @property
    def api_base(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.provider, "")).rstrip("/")
