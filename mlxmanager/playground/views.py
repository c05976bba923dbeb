"""The playground page (any logged-in user): chat with a profile over the WebSocket, saved chats."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from mlxmanager.errors import NotFound
from mlxmanager.playground import selectors, services
from mlxmanager.playground.models import Conversation
from mlxmanager.profiles.models import Profile

LIST_PARTIAL = "playground/playground.html#conversation-list"


def _user(request: HttpRequest) -> User:
    # Only logged-in users get here (login_required / django_auth).
    return cast(User, request.user)


def _current(request: HttpRequest) -> int | None:
    raw = request.GET.get("current") or request.POST.get("current") or ""
    return int(raw) if raw.isdigit() else None


def _own(request: HttpRequest, conversation_id: int) -> Conversation:
    try:
        return selectors.conversation_get(user=_user(request), conversation_id=conversation_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc


@login_required
@require_GET
def playground(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = _own(request, conversation_id) if conversation_id is not None else None
    # The playground chats: text and vision profiles (embeddings and speech have their own endpoints).
    chat_kinds = [Profile.KIND_LLM, Profile.KIND_VISION]
    enabled = list(Profile.objects.filter(enabled=True).order_by("-is_default", "name"))
    profiles = [p for p in enabled if p.kind in chat_kinds]
    names = {p.name for p in profiles}
    wanted = conversation.profile_name if conversation else request.GET.get("profile", "")
    selected = wanted if wanted in names else (profiles[0].name if profiles else "")
    context = {
        "profiles": profiles,
        # Speech profiles: dictate a message, and read answers aloud (over the same socket).
        "stt_profiles": [p for p in enabled if p.kind == Profile.KIND_STT],
        "tts_profiles": [p for p in enabled if p.kind == Profile.KIND_TTS],
        "selected": selected,
        "missing_profile": wanted if conversation and wanted not in names else "",
        "conversation": conversation,
        "conversation_data": {
            "id": conversation.pk if conversation else None,
            "messages": conversation.messages if conversation else [],
            "settings": conversation.settings if conversation else {},
        },
        "conversations": list(selectors.conversation_list(user=_user(request))),
        "current_id": conversation.pk if conversation else None,
    }
    return render(request, "playground/playground.html", context)


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    context = {
        "conversations": list(selectors.conversation_list(user=_user(request))),
        "current_id": _current(request),
    }
    return render(request, LIST_PARTIAL, context)


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    services.conversation_delete(conversation=_own(request, conversation_id))
    current = _current(request)
    if not request.htmx:  # type: ignore[attr-defined]
        return redirect("playground")
    if current == conversation_id:
        # The open chat is gone: start a fresh page rather than keep editing a deleted one.
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("playground")
        return response
    context = {"conversations": list(selectors.conversation_list(user=_user(request))), "current_id": current}
    return render(request, LIST_PARTIAL, context)
