"""Usage rollups, prices and budgets.

`UsageHourly` is the audit log's second hourly rollup: one row per (hour, user, API key,
requested model, backend), with input, cached and output tokens. The recorder's flusher adds
each batch to it in the same transaction as the audit rows and `RequestHourly`
(mlxmanager.audit.services.rollup_add), so the usage page reads a few rows per hour.
Ids are plain integers (0: none), like the audit log's: deleting a user or key keeps history.

`Price` is a price per 1M tokens for one backend label as the audit log writes it:
"cloud:<credential>" (what that credential's upstream bills: spend) or "local:<profile>"
(an optional cloud-equivalent price: what serving it locally saved).

`Budget` holds one user's or one API key's budget: tokens per UTC day and/or month, and
spend per UTC month.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q


class UsageHourly(models.Model):
    id = models.BigAutoField(primary_key=True)
    bucket = models.DateTimeField(help_text="The hour (UTC) these requests arrived in.")
    user_id = models.BigIntegerField(default=0, help_text="0: no user.")
    username = models.CharField(max_length=150, blank=True)
    api_key_id = models.BigIntegerField(default=0, help_text="0: no API key (the playground).")
    key_prefix = models.CharField(max_length=16, blank=True)
    requested_model = models.CharField(max_length=256, blank=True)
    backend = models.CharField(max_length=120, blank=True)
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0, help_text="All input tokens, cached ones included.")
    cached_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["bucket", "user_id", "api_key_id", "requested_model", "backend"],
                name="usage_hourly_group",
            )
        ]
        indexes = [
            models.Index(fields=["user_id", "bucket"], name="usage_hourly_user"),
            models.Index(fields=["api_key_id", "bucket"], name="usage_hourly_key"),
        ]

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H}h {self.username} {self.requested_model} {self.backend}"


def _money() -> models.DecimalField:  # type: ignore[type-arg]
    return models.DecimalField(max_digits=12, decimal_places=4, default=Decimal(0))


class Price(models.Model):
    backend = models.CharField(
        max_length=120, unique=True, help_text='"cloud:<credential>" (spend) or "local:<profile>" (saved).'
    )
    input_per_m = _money()
    cached_per_m = _money()
    output_per_m = _money()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["backend"]

    def __str__(self) -> str:
        return f"price of {self.backend}"

    @property
    def is_cloud(self) -> bool:
        return self.backend.startswith("cloud:")


class Budget(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    api_key = models.OneToOneField(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True, help_text="Tokens per UTC day.")
    tokens_per_month = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per UTC month."
    )
    spend_per_month = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="Cloud spend per UTC month."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(api_key__isnull=True))
                | (Q(user__isnull=True) & Q(api_key__isnull=False)),
                name="usage_budget_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"budget of {'user ' + str(self.user_id) if self.user_id else 'key ' + str(self.api_key_id)}"

    @property
    def empty(self) -> bool:
        return not (self.tokens_per_day or self.tokens_per_month or self.spend_per_month)
