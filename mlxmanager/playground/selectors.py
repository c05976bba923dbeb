"""Reads for saved playground conversations: a user only ever sees their own."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from mlxmanager.errors import NotFound
from mlxmanager.playground.models import Conversation


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    """The user's conversations, newest first, without their (possibly long) transcripts."""
    return Conversation.objects.filter(user=user).defer("messages").order_by("-updated_at", "-id")


def conversation_get(*, user: User, conversation_id: int) -> Conversation:
    try:
        return Conversation.objects.get(pk=conversation_id, user=user)
    except Conversation.DoesNotExist as exc:
        raise NotFound("no such conversation", param="id") from exc
