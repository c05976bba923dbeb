from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from mlxmanager.accounts import keycache
from mlxmanager.accounts.models import ApiKey
from mlxmanager.accounts.services import api_key_create, api_key_revoke

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
create_key = sync_to_async(api_key_create)


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    keycache.clear()
    yield
    keycache.clear()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The secrets that reached the database lookup (the real one still runs)."""
    seen: list[str] = []
    real = keycache.api_key_authenticate

    async def counting(secret: str) -> ApiKey | None:
        seen.append(secret)
        return await real(secret)

    monkeypatch.setattr(keycache, "api_key_authenticate", counting)
    return seen


async def test_a_key_seen_once_is_answered_without_a_query(make_user, lookups) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")

    first = await keycache.authenticate(secret)
    again = await keycache.authenticate(secret)

    assert first is not None and again is not None
    assert first.pk == again.pk == key.pk
    assert again.user.pk == user.pk
    assert lookups == [secret]


async def test_unknown_keys_are_never_cached(make_user) -> None:
    assert await keycache.authenticate("mlxm-not-a-real-key") is None
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="later")
    assert await keycache.authenticate(secret) is not None
    assert await keycache.authenticate("") is None
    assert await keycache.authenticate("x" * 201) is None


async def test_revoking_a_key_takes_effect_at_once(make_user) -> None:
    user = await sync_to_async(make_user)()
    key, secret = await create_key(user=user, name="laptop")
    assert await keycache.authenticate(secret) is not None

    await sync_to_async(api_key_revoke)(user=user, key_id=key.pk)

    assert await keycache.authenticate(secret) is None


async def test_deactivating_the_user_takes_effect_at_once(make_user) -> None:
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop")
    assert await keycache.authenticate(secret) is not None

    user.is_active = False
    await sync_to_async(user.save)()

    assert await keycache.authenticate(secret) is None


async def test_expiry_is_checked_on_every_hit(make_user) -> None:
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="short", expires_at=timezone.now() + timedelta(hours=1))
    cached = await keycache.authenticate(secret)
    assert cached is not None

    cached.expires_at = timezone.now() - timedelta(seconds=1)  # the cached object itself runs out

    assert await keycache.authenticate(secret) is None


async def test_a_zero_ttl_looks_the_key_up_every_time(make_user, settings, lookups) -> None:
    settings.MLXM_API_KEY_CACHE_SECONDS = 0
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop")

    assert await keycache.authenticate(secret) is not None
    assert await keycache.authenticate(secret) is not None

    assert lookups == [secret, secret]


async def test_an_entry_expires_after_the_ttl(make_user, settings, monkeypatch, lookups) -> None:
    settings.MLXM_API_KEY_CACHE_SECONDS = 10
    user = await sync_to_async(make_user)()
    _, secret = await create_key(user=user, name="laptop")
    await keycache.authenticate(secret)
    later = keycache._clock() + 11
    monkeypatch.setattr(keycache, "_clock", lambda: later)

    assert await keycache.authenticate(secret) is not None

    assert lookups == [secret, secret]
