from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class SiteSetting(models.Model):
    """One setting changed on the Settings page: it overrides its environment variable (the
    default) until cleared. Keys and their validation: mlxmanager/sitesettings/registry.py."""

    key = models.CharField(max_length=64, primary_key=True)
    value = models.JSONField()
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return self.key
