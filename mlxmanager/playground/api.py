"""Saved playground conversations in the management API (session + CSRF): each user's own."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django.contrib.auth.models import User
from django.http import HttpRequest
from ninja import Router, Schema, Status

from mlxmanager.playground import selectors, services
from mlxmanager.playground.schemas import ChatSettings, StoredMessage

router = Router(tags=["playground conversations"])


def _user(request: HttpRequest) -> User:
    # Only logged-in users get here (login_required / django_auth).
    return cast(User, request.user)


class ConversationSummary(Schema):
    id: int
    title: str
    profile_name: str
    created_at: datetime
    updated_at: datetime


class ConversationOut(ConversationSummary):
    messages: list[dict[str, Any]]
    settings: dict[str, Any]


class ConversationIn(Schema):
    profile_name: str
    title: str = ""
    messages: list[StoredMessage]
    settings: ChatSettings | None = None


class ConversationPatch(Schema):
    profile_name: str | None = None
    title: str | None = None
    messages: list[StoredMessage] | None = None
    settings: ChatSettings | None = None


def _dump(messages: list[StoredMessage] | None) -> list[Any] | None:
    return None if messages is None else [m.stored() for m in messages]


@router.get("", response=list[ConversationSummary])
def list_conversations(request: HttpRequest) -> list[Any]:
    return list(selectors.conversation_list(user=_user(request)))


@router.post("", response={201: ConversationOut})
def create_conversation(request: HttpRequest, body: ConversationIn) -> Status[Any]:
    conversation = services.conversation_create(
        user=_user(request),
        profile_name=body.profile_name,
        title=body.title,
        messages=_dump(body.messages) or [],
        settings=body.settings.stored() if body.settings else None,
    )
    return Status(201, conversation)


@router.get("/{conversation_id}", response=ConversationOut)
def get_conversation(request: HttpRequest, conversation_id: int) -> Any:
    return selectors.conversation_get(user=_user(request), conversation_id=conversation_id)


@router.patch("/{conversation_id}", response=ConversationOut)
def update_conversation(request: HttpRequest, conversation_id: int, body: ConversationPatch) -> Any:
    conversation = selectors.conversation_get(user=_user(request), conversation_id=conversation_id)
    return services.conversation_update(
        conversation=conversation,
        messages=_dump(body.messages),
        title=body.title,
        profile_name=body.profile_name,
        settings=body.settings.stored() if body.settings else None,
    )


@router.delete("/{conversation_id}", response={204: None})
def delete_conversation(request: HttpRequest, conversation_id: int) -> Status[None]:
    conversation = selectors.conversation_get(user=_user(request), conversation_id=conversation_id)
    services.conversation_delete(conversation=conversation)
    return Status(204, None)
