"""Writes for saved playground conversations."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import User
from pydantic import TypeAdapter, ValidationError

from mlxmanager.errors import DomainError
from mlxmanager.playground.models import Conversation
from mlxmanager.playground.schemas import MAX_MESSAGES, ChatSettings, StoredMessage

TITLE_CHARS = 60
_PROFILE = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")
_messages = TypeAdapter(list[StoredMessage])


def _clean_messages(messages: list[Any]) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise DomainError("messages must be a list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise DomainError(f"a conversation holds at most {MAX_MESSAGES} messages", param="messages")
    try:
        parsed = _messages.validate_python(messages)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "messages" + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in first["loc"])
        raise DomainError(f"{where}: {first['msg']}", param=where) from exc
    return [m.stored() for m in parsed]


def _clean_settings(settings: Any) -> dict[str, Any]:
    try:
        return ChatSettings.model_validate(settings or {}).stored()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "settings" + "".join(f".{x}" for x in first["loc"])
        raise DomainError(f"{where}: {first['msg']}", param=where) from exc


def _clean_title(title: str) -> str:
    title = " ".join((title or "").split())
    if len(title) > 200:
        raise DomainError("the title is longer than 200 characters", param="title")
    return title


def _clean_profile(name: str) -> str:
    if not _PROFILE.match(name or ""):
        raise DomainError("profile_name must be a profile's name", param="profile_name")
    return name


def title_from(messages: list[dict[str, Any]]) -> str:
    """The first user message's first line, shortened: what the sidebar shows."""
    for m in messages:
        if m["role"] == "user" and m["content"].strip():
            line = " ".join(m["content"].split())
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
    return "New chat"


def conversation_create(
    *,
    user: User,
    profile_name: str,
    messages: list[Any],
    title: str = "",
    settings: dict[str, Any] | None = None,
) -> Conversation:
    cleaned = _clean_messages(messages)
    return Conversation.objects.create(
        user=user,
        profile_name=_clean_profile(profile_name),
        title=_clean_title(title) or title_from(cleaned),
        messages=cleaned,
        settings=_clean_settings(settings),
    )


def conversation_update(
    *,
    conversation: Conversation,
    messages: list[Any] | None = None,
    title: str | None = None,
    profile_name: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Conversation:
    """Replace the given parts; the playground sends the whole transcript (and its settings)
    after each turn."""
    if settings is not None:
        conversation.settings = _clean_settings(settings)
    if messages is not None:
        conversation.messages = _clean_messages(messages)
    if profile_name is not None:
        conversation.profile_name = _clean_profile(profile_name)
    if title is not None:
        conversation.title = _clean_title(title) or title_from(conversation.messages)
    conversation.save()
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()
