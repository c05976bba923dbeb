"""The audit log: one row per /v1 request (metadata only) and one per admin change.

Rows keep snapshots (username, key prefix, rule and backend names) next to plain ids, so the
log survives deletions and the list page needs no joins. No foreign-key constraints: a user
or key deleted later leaves its history in place, and deleting it never touches a
million-row table.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class RequestLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, help_text="When the request arrived.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    username = models.CharField(max_length=150, blank=True)
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    key_prefix = models.CharField(max_length=16, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True, db_index=True, help_text="X-Request-ID.")
    endpoint = models.CharField(max_length=64)
    requested_model = models.CharField(max_length=256, blank=True)
    rule = models.CharField(max_length=100, blank=True, help_text="The routing rule that matched, if any.")
    backend = models.CharField(
        max_length=120, blank=True, help_text='"local:<profile>" or "cloud:<credential>" that answered.'
    )
    upstream_model = models.CharField(max_length=256, blank=True)
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Backends tried (fallbacks + 1).")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to the first generated token.")
    duration_ms = models.FloatField(default=0)
    tokens_per_s = models.FloatField(null=True, blank=True, help_text="Decode rate after the first token.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Keyset pagination walks (created_at, id); each filter has its own time-ordered index.
            models.Index(fields=["created_at", "id"], name="audit_req_time"),
            models.Index(fields=["username", "created_at", "id"], name="audit_req_user_time"),
            models.Index(fields=["requested_model", "created_at", "id"], name="audit_req_model_time"),
            models.Index(fields=["backend", "created_at", "id"], name="audit_req_backend_time"),
            models.Index(fields=["status", "created_at", "id"], name="audit_req_status_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.endpoint} {self.requested_model} {self.status}"

    @property
    def ok(self) -> bool:
        return self.status < 400 and not self.error_type

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestHourly(models.Model):
    """Per-hour totals of the request log, one row per (hour, user, model, backend, status).

    The recorder adds each flushed batch to these in the same transaction (an upsert per
    group), so totals and the chart over days read a few rows per hour instead of every
    request. `ok` is "status < 400 and no error type", the log page's notion of success.
    """

    id = models.BigAutoField(primary_key=True)
    bucket = models.DateTimeField(help_text="The hour (UTC) these requests arrived in.")
    username = models.CharField(max_length=150, blank=True)
    requested_model = models.CharField(max_length=256, blank=True)
    backend = models.CharField(max_length=120, blank=True)
    status = models.PositiveSmallIntegerField()
    ok = models.BooleanField()
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["bucket", "username", "requested_model", "backend", "status", "ok"],
                name="audit_hourly_group",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H}h {self.username} {self.requested_model} {self.status}: {self.requests}"


class AdminAction(models.Model):
    """An admin change: who did what to which object, and which fields changed (never secrets)."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text='Blank: a command or "system".')
    action = models.CharField(max_length=100, help_text='A code such as "mlxmanager.credential.created".')
    object_type = models.CharField(max_length=50)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["created_at", "id"], name="audit_action_time")]

    def __str__(self) -> str:
        return f"{self.actor_name or 'system'} {self.action} {self.object_repr}"


class LoggedModel(models.Model):
    """Mixin: `obj.log_action("mlxmanager.x.changed", user=..., data={...})` (pretix style)."""

    class Meta:
        abstract = True

    def log_action(self, action: str, *, user: Any = None, data: dict[str, Any] | None = None) -> AdminAction:
        from mlxmanager.audit.services import log_action

        return log_action(self, action, user=user, data=data)
