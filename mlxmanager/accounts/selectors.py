"""Reads for users and API keys."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import hash_key

# last_used_at is written at most this often per key, to keep writes off the hot path.
_TOUCH_EVERY = timedelta(seconds=60)


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created_at")


def users_exist() -> bool:
    return get_user_model().objects.exists()


async def api_key_authenticate(secret: str) -> ApiKey | None:
    """The active key matching `secret`, with its user loaded; None if unknown."""
    if not secret or len(secret) > 200:
        return None
    try:
        key = await ApiKey.objects.select_related("user").aget(digest=hash_key(secret))
    except ApiKey.DoesNotExist:
        return None
    now = timezone.now()
    if not key.is_active(now=now) or not key.user.is_active:
        return None
    if key.last_used_at is None or now - key.last_used_at > _TOUCH_EVERY:
        key.last_used_at = now
        await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=now)
    return key
