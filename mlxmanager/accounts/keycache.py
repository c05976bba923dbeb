"""A short-lived in-process cache of authenticated API keys, for the gateway's hot path.

A /v1 request would otherwise cost a database query (and, in async Django, a thread hop and
a fresh SQLite connection) just to find its key. A key found once is reused for
`MLXM_API_KEY_CACHE_SECONDS`; expiry and revocation are still checked on every hit, any
change to a key or a user clears this process's cache at once (signals), and other web
processes see a revocation within the TTL. Unknown keys are never cached.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.selectors import api_key_authenticate
from mlxmanager.accounts.services import hash_key

MAX_ENTRIES = 10_000
_clock = time.monotonic
_cache: dict[str, tuple[float, ApiKey]] = {}


def clear() -> None:
    _cache.clear()


async def authenticate(secret: str) -> ApiKey | None:
    """Like `api_key_authenticate`, answered from the cache when the key was seen recently."""
    if not secret or len(secret) > 200:
        return None
    ttl = settings.MLXM_API_KEY_CACHE_SECONDS
    digest = hash_key(secret)
    now = _clock()
    hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        cached = hit[1]
        if cached.is_active(now=timezone.now()) and cached.user.is_active:
            return cached
        _cache.pop(digest, None)
        return None
    found = await api_key_authenticate(secret)
    if found is not None and ttl > 0:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[digest] = (now + ttl, found)
    return found


@receiver(post_save, sender=ApiKey, dispatch_uid="mlxm_keycache_key_saved")
@receiver(post_delete, sender=ApiKey, dispatch_uid="mlxm_keycache_key_deleted")
def _key_changed(sender: Any, **kwargs: Any) -> None:
    # last_used_at touches (queryset updates) send no signal, so this is a real change.
    clear()


@receiver(post_save, sender=get_user_model(), dispatch_uid="mlxm_keycache_user_saved")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="mlxm_keycache_user_deleted")
def _user_changed(sender: Any, **kwargs: Any) -> None:
    clear()
