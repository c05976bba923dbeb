from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    """A playground chat, kept for the user who had it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    # The profile's name, not a foreign key: a conversation outlives a renamed or deleted profile.
    profile_name = models.CharField(max_length=100)
    title = models.CharField(max_length=200)
    # [{"role", "content", "reasoning"?, "usage"?, "finish_reason"?}, ...]
    messages = models.JSONField(default=list)
    # The chat's settings in the playground (schemas.ChatSettings): sampling, thinking, tools.
    settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title
