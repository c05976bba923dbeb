from __future__ import annotations

from django.db import models
from django.utils import timezone

from mlxmanager.audit.models import LoggedModel


class Rule(LoggedModel):
    """Which requested model names go where. Enabled rules apply in `position` order; the
    first match wins. Its targets are tried in order: the first is the primary, the rest
    are the fallback chain."""

    class Match(models.TextChoices):
        EXACT = "exact", "exact name"
        GLOB = "glob", "glob (* ? [..])"
        REGEX = "regex", "regular expression"

    name = models.CharField(max_length=100, unique=True)
    match_type = models.CharField(max_length=8, choices=Match.choices, default=Match.EXACT)
    pattern = models.CharField(max_length=200)
    position = models.PositiveIntegerField(default=0, db_index=True)
    enabled = models.BooleanField(default=True)
    timeout_s = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds to wait for each backend to start answering (blank: default).",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name


class RuleTarget(models.Model):
    """One backend of a rule: a local profile (by name) or a credential plus upstream model."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="targets")
    position = models.PositiveSmallIntegerField(default=0)
    profile_name = models.CharField(max_length=100, blank=True)
    credential = models.ForeignKey(
        "credentials.Credential", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    upstream_model = models.CharField(max_length=256, blank=True, help_text="Blank: the requested name.")

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"{self.rule}: {self.label}"

    @property
    def kind(self) -> str:
        return "cloud" if self.credential_id else "local"

    @property
    def label(self) -> str:
        if self.credential_id:
            assert self.credential is not None
            return (
                f"{self.credential.name}:{self.upstream_model}"
                if self.upstream_model
                else self.credential.name
            )
        return f"local:{self.profile_name}"
